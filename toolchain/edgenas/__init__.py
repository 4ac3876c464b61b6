"""edgenas: hardware-aware NAS for embedded devices (early-exit networks, ONNX export, TVM compile, profiling)."""
from edgenas.errors import EdgenasError

__version__ = "0.1.0"
__all__ = ["EdgenasError", "__version__"]
