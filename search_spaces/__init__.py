"""The study files that ship with `study`, installed as the package study.search_spaces
(see pyproject.toml): `study run --space smoke` finds smoke.yaml here from any directory."""
