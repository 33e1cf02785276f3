"""python -m minivit.ship RUN_DIR: make a finished CIFAR-10 run's weights ship with the package
(``minivit/weights/<model>.safetensors``, float16, and its ``<model>.json`` record), so that
``create_model(<model>, pretrained=True)`` loads them. See ``minivit.models.pretrained.ship_run``."""
from minivit.models.pretrained import main

if __name__ == "__main__":
    main()
