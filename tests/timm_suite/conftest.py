"""Markers for the timm suite: the harness's own, and those timm's vendored file declares (its
pyproject registers them; here they only silence unknown-mark warnings at import)."""

_TIMM_MARKERS = ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features", "fxforward",
                 "fxbackward", "timeout")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timm_create_kwargs(kwargs): keyword arguments added to create_model calls in a timm test body"
    )
    for name in _TIMM_MARKERS:
        config.addinivalue_line("markers", f"{name}: marker of timm's tests/test_models.py")
