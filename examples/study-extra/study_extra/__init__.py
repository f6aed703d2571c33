"""An example plugin package of `study` (docs/plugins.md): one component per entry point group.

    contrast   study.degradations   contrast reduction, levels 0-50, CPU and device operators
    resnet20   study.models         the CIFAR ResNet20 (3 blocks a stage), study's ResNet
    npz        study.datasets       arrays from a NumPy .npz file
    median     study.fusion         the experts' elementwise median

`pip install -e examples/study-extra` registers them; `extra_smoke.yaml` beside this package
searches a subset of five degradations, contrast among them.
"""
