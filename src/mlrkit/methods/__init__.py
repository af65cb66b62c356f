"""Methods and baselines; importing this package registers every one of them."""

from importlib import import_module

_MODULES = ["baseline", "mlgcn", "ssgrl", "dlsa", "cmsg", "sigrl", "coop", "sdcsp"]

for _m in _MODULES:
    try:
        import_module(f"{__name__}.{_m}")
    except ModuleNotFoundError as e:  # a method file not written yet
        if e.name != f"{__name__}.{_m}":
            raise
