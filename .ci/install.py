"""Install the pinned torch/torchvision, this package with its dev extras and the pinned Transformers into the venv
whose python runs this script (`make install` calls it).

uv installs first when it can: it downloads and unpacks wheels in parallel, so the 5.5 GB of torch's CUDA build and
the rest install in about 50-80 s from a cold cache on 2 cores, where pip took about 165 s. uv does not read pip's
configuration, so pip's indexes, find-links, constraints and certificate are passed on to it, and it considers every
index as pip does. When uv cannot be installed or fails, pip installs everything as before.

    python .ci/install.py TORCH_PIN TORCHVISION_PIN TRANSFORMERS_PIN
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

# pip's settings (`pip config list` names them section.key) and the uv options that mean the same
PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "constraint": "--constraint"}


def pip_settings() -> dict[str, list[str]]:
    """pip's configured values by key (files and PIP_* variables), each value split into its items."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings: dict[str, list[str]] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        items = [item for part in shlex.split(value) for item in part.split()]
        values = settings.setdefault(key.rsplit(".", 1)[-1], [])
        values.extend(item for item in items if item not in values)
    return settings


def uv_options(settings: dict[str, list[str]]) -> list[str]:
    options = ["--index-strategy", "unsafe-best-match"]  # pip's choice: the best version from any index
    for key, flag in PIP_TO_UV.items():
        for value in settings.get(key, []):
            options += [flag, value]
    if settings.get("cert"):
        options.append("--native-tls")  # the system's certificates, as pip's configured bundle
    return options


def run(command: list[str], **kwargs) -> bool:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, **kwargs).returncode == 0


def install_with_uv(torch_pins: list[str], package: list[str]) -> bool:
    if not run([sys.executable, "-m", "pip", "install", "--quiet", "uv"]):
        return False
    uv = Path(sys.executable).parent / "uv"
    settings = pip_settings()
    environment = {**os.environ, "SSL_CERT_FILE": settings["cert"][0]} if settings.get("cert") else None
    return run([str(uv), "pip", "install", "--quiet", "--python", sys.executable, *uv_options(settings),
                "--upgrade-package", "pip", "pip", *torch_pins, *package], env=environment)


def install_with_pip(torch_pins: list[str], package: list[str]) -> bool:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    return run(pip + ["--upgrade", "pip"]) and run(pip + torch_pins) and run(pip + package)


def main() -> int:
    torch_pin, torchvision_pin, transformers_pin = sys.argv[1:4]
    torch_pins, package = [torch_pin, torchvision_pin], ["-e", ".[dev]", transformers_pin]
    if install_with_uv(torch_pins, package):
        return 0
    print("uv could not install the environment; installing with pip", flush=True)
    return 0 if install_with_pip(torch_pins, package) else 1


if __name__ == "__main__":
    sys.exit(main())
