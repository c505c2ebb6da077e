"""One typed error for a model file that cannot be used, and the checks that find it before loading.

A missing, empty, truncated, corrupt or wrong-format checkpoint (.pt), ONNX model (.onnx) or TensorRT
engine (.engine / .plan) raises `ModelFileError` with ONE line naming the file and what is wrong, at the
single load points (`create_backend`, `load_checkpoint`); `ppe` prints that line and exits non-zero, the
node logs it and its configure transition fails.

The checks read the file's bytes only (no torch, ONNX Runtime or TensorRT import):
- .pt: torch.save writes a zip archive; its end record must be there (else truncated) and every member's
  CRC must match (else corrupt); a file that starts like JSON, YAML or text is named as such.
- .onnx: a protobuf ModelProto; `onnx.load` must parse it and `onnx.checker` accept it (truncation and
  flipped bytes land here).
- .engine / .plan: non-empty (TensorRT itself says whether it deserialises; its error is wrapped).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

CHECKPOINT_SUFFIXES = ('.pt', '.pth')
ONNX_SUFFIXES = ('.onnx',)
ENGINE_SUFFIXES = ('.engine', '.plan', '.trt')


class ModelFileError(ValueError):
    """A model file is missing or unusable; str() is one line naming the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = ' '.join(str(problem).split())[:300]  # one line, bounded
        super().__init__(f'model file {self.path}: {self.problem}')


class MissingModelFileError(ModelFileError, FileNotFoundError):
    """The model file does not exist (also a FileNotFoundError, for callers that catch that)."""


def _looks_like(head: bytes) -> str:
    """What the first bytes of a file look like, for the message: 'JSON', 'text', ... or ''."""
    stripped = head.lstrip()
    if stripped[:1] in (b'{', b'['):
        return 'JSON'
    if stripped[:5] == b'<?xml' or stripped[:1] == b'<':
        return 'XML/HTML'
    if head[:4] == b'\x89PNG' or head[:3] == b'\xff\xd8\xff':
        return 'an image'
    try:
        head.decode('utf-8')
    except UnicodeDecodeError:
        return ''
    return 'text'


def _check_checkpoint(path: Path, head: bytes) -> None:
    if head[:2] == b'\x80\x02' or head[:1] == b'\x80':
        return  # torch's legacy pickle format: torch.load says more if it is broken
    if head[:4] != b'PK\x03\x04':
        kind = _looks_like(head)
        raise ModelFileError(path, f'not a PyTorch checkpoint (a torch.save zip archive)'
                                   f'{f"; it looks like {kind}" if kind else ""}')
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as error:
        raise ModelFileError(path, f'truncated or corrupt PyTorch checkpoint ({error})') from None
    except (EOFError, OSError, ValueError, zipfile.LargeZipFile) as error:
        raise ModelFileError(path, f'unreadable PyTorch checkpoint ({type(error).__name__}: '
                                   f'{error})') from None
    if bad is not None:
        raise ModelFileError(path, f'corrupt PyTorch checkpoint: member {bad} fails its CRC check')


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeError, ...
        raise ModelFileError(path, f'not a readable ONNX model, truncated or corrupt '
                                   f'({type(error).__name__}: {error})') from None
    if not model.graph.node:
        raise ModelFileError(path, 'not an ONNX model (no graph nodes; truncated or another file type)')
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # noqa: BLE001 - onnx.checker.ValidationError and others
        raise ModelFileError(path, f'invalid ONNX model ({type(error).__name__}: {error})') from None


def check_model_file(path: str | os.PathLike) -> Path:
    """Raise ModelFileError when `path` is missing, empty, of an unknown type, truncated or corrupt.

    Returns:
        The path, when the checks pass (loading may still fail; callers wrap that in ModelFileError too).
    """
    path = Path(path)
    if not path.exists():
        raise MissingModelFileError(path, 'does not exist')
    if not path.is_file():
        raise ModelFileError(path, 'is not a file')
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(path, 'is empty (0 bytes)')
    suffix = path.suffix.lower()
    with path.open('rb') as stream:
        head = stream.read(64)
    if suffix in CHECKPOINT_SUFFIXES:
        _check_checkpoint(path, head)
    elif suffix in ONNX_SUFFIXES:
        _check_onnx(path)
    elif suffix not in ENGINE_SUFFIXES:
        raise ModelFileError(path, f'unknown model file type {suffix or "(no suffix)"!r}; expected a '
                                   f'checkpoint ({", ".join(CHECKPOINT_SUFFIXES)}), an ONNX model (.onnx) or '
                                   f'a TensorRT engine ({", ".join(ENGINE_SUFFIXES)})')
    return path


def as_model_file_error(path: str | os.PathLike, error: BaseException, what: str) -> ModelFileError:
    """A loader's exception as a ModelFileError: '<what> failed: <Type>: <first line>'."""
    if isinstance(error, ModelFileError):
        return error
    first = (str(error).strip().splitlines() or [''])[0]
    return ModelFileError(path, f'{what} failed: {type(error).__name__}: {first}')
