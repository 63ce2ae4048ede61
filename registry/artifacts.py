"""What a registered version may hold, checked before anything of it is loaded or run (issue 20).

A version is vaegen's models-from-code pyfunc and nothing else: no pickle anywhere, and every code
file byte-identical to vaegen's own (the installed sources, or a release listed in
released_code.json). Its config.json and weights.npz are bounded before anything is built: the
config within the caps of vae_core.config, every weight's shape read from its .npy header inside
the zip (zipfile infos, numpy's header reader; nothing inflated) and compared with the shapes the
config implies, before one tensor exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import yaml

import vae_core
from vae_core.config import MAX_PARAMETERS, VAEConfig, decoder_state_shapes
from vae_core.errors import VaegenError

# What vaegen's pickle-free models-from-code pyfunc consists of (registry.models.TrainingRun._log_pyfunc).
# Everything else is refused: MLflow 3.17 unpickles a `python_model` (cloudpickle) by default, and
# other flavors' loaders (pytorch, sklearn, ...) unpickle their data files.
ENV_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "input_example.json",
    "serving_input_example.json",
    "registered_model_meta",
    "uv.lock",
    "pyproject.toml",
    ".python-version",
}
WEIGHT_ARTIFACTS = {"config": "artifacts/config.json", "weights": "artifacts/weights.npz"}
CODE_LOADERS = ("mlflow.pyfunc.loaders.code_model", "mlflow.pyfunc.model")
CODE_DIR = "code"
PYFUNC_FILE = "pyfunc_decoder.py"  # the model code's name in a version, as MLflow logs registry/pyfunc_decoder.py
RELEASED_CODE = Path(__file__).with_name("released_code.json")  # {release: {path in a version: sha256}}
MAX_CONFIG_BYTES = 4 << 20  # a config with the most classes vaegen allows is ~0.7 MB of JSON
MAX_COMPRESSION_RATIO = 50  # float32 weights barely deflate; np.savez stores them (ratio 1)
RATIO_CHECKED_ABOVE_BYTES = 1 << 20  # small members (a zero bias) may deflate far more, harmlessly
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default limit
WEIGHTS_DTYPE = np.dtype("<f4")


class RefusedVersion(VaegenError):
    """A registered version vaegen will not load: foreign code, pickle, or sizes its config does not imply."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def installed_code() -> dict[str, str]:
    """Path inside a version -> sha256 of the installed source it must equal."""
    root = Path(vae_core.__file__).parent
    code = {PYFUNC_FILE: _sha256(Path(__file__).with_name(PYFUNC_FILE))}
    for path in sorted(root.rglob("*.py")):
        code[f"{CODE_DIR}/vae_core/{path.relative_to(root).as_posix()}"] = _sha256(path)
    return code


@functools.lru_cache(maxsize=1)
def known_code() -> dict[str, frozenset[str]]:
    """Every sha256 a code file may have: the installed sources and each release listed in released_code.json."""
    known: dict[str, set[str]] = {}
    releases = json.loads(RELEASED_CODE.read_text()) if RELEASED_CODE.is_file() else {}
    for files in [installed_code(), *releases.values()]:
        for name, digest in files.items():
            known.setdefault(name, set()).add(digest)
    return {name: frozenset(digests) for name, digests in known.items()}


def _is_code(name: str) -> bool:
    return name.endswith((".py", ".pyc", ".pyw", ".so", ".pth")) or name.startswith(CODE_DIR + "/")


def code_problem(local: Path, files: list[str]) -> str | None:
    """Why a version's code is not vaegen's own (None when every code file is byte-identical to a known one)."""
    known = known_code()
    for name in files:
        if not _is_code(name):
            continue
        if name not in known:
            return f"code file {name} is not one of vaegen's"
        digest = _sha256(local / name)
        if digest not in known[name]:
            return f"code file {name} differs from vaegen's own (sha256 {digest[:12]}...)"
    if PYFUNC_FILE not in files:
        return f"no {PYFUNC_FILE}"
    return None


def unsafe_reason(local: Path) -> str | None:
    """Why loading the downloaded version at `local` could run code that is not vaegen's, or None."""
    files = sorted(path.relative_to(local).as_posix() for path in local.rglob("*") if not path.is_dir())
    reason = _unsafe_mlmodel(local / "MLmodel")
    if reason is not None:
        return reason
    allowed = ENV_FILES | set(WEIGHT_ARTIFACTS.values())
    unexpected = [name for name in files if name not in allowed and not _is_code(name)]
    unexpected += [name for name in files if _is_code(name) and not name.endswith(".py")]
    missing = [name for name in WEIGHT_ARTIFACTS.values() if name not in files]
    if missing:
        return f"missing {', '.join(missing)}"
    if unexpected:
        return f"unexpected artifact(s) {', '.join(unexpected[:5])}: only weights.npz, config.json and code are allowed"
    return code_problem(local, files)


def _unsafe_mlmodel(path: Path) -> str | None:
    """Why an MLmodel file could make MLflow unpickle, or None if it is vaegen's models-from-code pyfunc."""
    if not path.is_file():
        return "no MLmodel file"
    try:
        model = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        return f"MLmodel is not plain YAML ({type(error).__name__})"
    flavors = model.get("flavors") if isinstance(model, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != {"python_function"}:
        return f"flavors {sorted(flavors) if isinstance(flavors, dict) else flavors}, not only python_function"
    flavor = flavors["python_function"]
    if not isinstance(flavor, dict):
        return "python_function flavor is not a mapping"
    if flavor.get("loader_module") not in CODE_LOADERS:
        return f"pyfunc loader {flavor.get('loader_module')!r}, not models-from-code"
    if "python_model" in flavor or "model_code_path" not in flavor:
        return f"pyfunc python_model {flavor.get('python_model')!r} is a cloudpickle file, not code"
    if Path(str(flavor["model_code_path"])).name != PYFUNC_FILE:
        return f"model code {flavor['model_code_path']!r} is not vaegen's {PYFUNC_FILE}"
    if "data" in flavor or "compression" in flavor:
        return "pyfunc flavor carries serialized data"
    artifacts = {
        name: (info or {}).get("path") if isinstance(info, dict) else info
        for name, info in (flavor.get("artifacts") or {}).items()
    }
    if artifacts != WEIGHT_ARTIFACTS:
        return f"pyfunc artifacts {artifacts}, not exactly {WEIGHT_ARTIFACTS}"
    if flavor.get("code") not in (None, CODE_DIR):
        return f"code folder {flavor.get('code')!r}, not {CODE_DIR!r}"
    return None


def read_config(path: Path) -> VAEConfig:
    """config.json, bounded in bytes before it is parsed and in every size it implies (VAEConfig's caps)."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise RefusedVersion(f"config.json is {size:,} bytes, more than {MAX_CONFIG_BYTES:,}")
    try:
        return VAEConfig.from_dict(json.loads(path.read_bytes()))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise RefusedVersion(f"config.json is not valid JSON ({type(error).__name__})") from None
    except VaegenError as error:
        raise RefusedVersion(f"config.json: {error}") from None


def npy_header(member: zipfile.ZipExtFile) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of one .npy inside a zip, reading only its header."""
    version = np.lib.format.read_magic(member)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"npy format version {version}")
    shape, _, dtype = readers[version](member, max_header_size=MAX_NPY_HEADER_BYTES)
    return tuple(shape), dtype, member.tell()


def weights_problem(path: Path, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why weights.npz is not exactly the float32 arrays of `expected` shapes, judged from the zip's directory and
    each member's .npy header: declared sizes and compression ratios, never an inflated byte beyond the headers."""
    parameters = sum(math.prod(shape) for shape in expected.values())
    if parameters > MAX_PARAMETERS:
        return f"config.json implies {parameters:,} decoder parameters, more than vaegen's cap of {MAX_PARAMETERS:,}"
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            wanted = sorted(f"{key}.npy" for key in expected)
            if sorted(names) != wanted:
                extra, missing = sorted(set(names) - set(wanted)), sorted(set(wanted) - set(names))
                return (
                    f"weights.npz holds {len(names)} arrays, config.json implies {len(wanted)}"
                    + (f"; not expected {', '.join(extra[:3])}" if extra else "")
                    + (f"; missing {', '.join(missing[:3])}" if missing else "")
                )
            for info in infos:
                problem = _member_problem(archive, info, expected[info.filename.removesuffix(".npy")])
                if problem:
                    return f"weights.npz member {info.filename}: {problem}"
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as error:
        return f"weights.npz is not a readable npz ({type(error).__name__}: {str(error)[:80]})"
    return None


def _member_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple[int, ...]) -> str | None:
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"compression method {info.compress_type}, not stored or deflated"
    ratio_limit_bytes = MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
    if info.file_size > max(RATIO_CHECKED_ABOVE_BYTES, ratio_limit_bytes):
        return (
            f"declares {info.file_size:,} bytes from {info.compress_size:,} compressed (more than "
            f"{MAX_COMPRESSION_RATIO}x: a decompression bomb)"
        )
    with archive.open(info) as member:
        found_shape, dtype, header_bytes = npy_header(member)
    if dtype != WEIGHTS_DTYPE:
        return f"dtype {dtype}, not float32"
    if found_shape != shape:
        return f"shape {found_shape}, config.json implies {shape}"
    expected_bytes = header_bytes + math.prod(shape) * WEIGHTS_DTYPE.itemsize
    if info.file_size != expected_bytes:
        return f"declares {info.file_size:,} bytes, its header implies {expected_bytes:,}"
    return None


def read_weights(path: Path, config: VAEConfig) -> dict[str, np.ndarray]:
    """The decoder's state as numpy arrays, after weights_problem found nothing; never unpickles."""
    problem = weights_problem(path, decoder_state_shapes(config))
    if problem is not None:
        raise RefusedVersion(problem)
    with np.load(path, allow_pickle=False) as weights:
        return {key: weights[key].copy() for key in weights.files}
