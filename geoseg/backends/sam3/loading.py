"""Loading SAM 3: a hub id or a folder, checked before torch loads (a missing or gated model
fails in a second), on the device and precision asked for, and what tells its weights apart."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from geoseg.core import heap
from geoseg.errors import ModelLoadError, UsageError, option

if TYPE_CHECKING:
    import torch

log = logging.getLogger("geoseg")

HUB_ID = "facebook/sam3"
LICENCE = f"accept the licence on https://huggingface.co/{HUB_ID} and run `hf auth login`"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Seconds to wait for the hub's answer before loading a hub id (see `check_hub`).
HUB_TIMEOUT = 2.0


def pick_device(device: str | None) -> torch.device:
    import torch

    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UsageError(f"{option('device', device)} is not a torch device: use cuda, cuda:N, mps or cpu") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{option('device', device)}: no CUDA GPU is visible to torch; use {option('device', 'cpu')}")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"{option('device', device)}: only {torch.cuda.device_count()} CUDA GPU(s) here "
                         "(cuda:0 first)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option('device', device)}: MPS is not available here; use {option('device', 'cpu')}")
    return chosen


# glibc's malloc serves a block above this from mmap, and gives it back to the system when freed
MMAP_THRESHOLD = 256 << 10


def return_freed_memory() -> bool:
    """On glibc, let large blocks freed by torch on the CPU go back to the system (`heap.mmap_threshold`):
    else a tile's activations come from the heaps of the run's threads and stay there, fragmented:
    about 200 MB more at the peak of a run on the CPU. False where there is no glibc (other
    platforms keep their allocator's behaviour)."""
    return heap.mmap_threshold(MMAP_THRESHOLD)


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    import torch

    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        # Pre-Ampere GPUs (T4, V100) have no fast bf16.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise UsageError(f"{option('dtype', dtype)}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])  # type: ignore[no-any-return]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _looks_like_path(model: str) -> bool:
    """A hub id is `owner/name`; anything else that names the filesystem is a folder."""
    return (
        os.path.isabs(model)
        or model.startswith((".", "~"))
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


def load(model: str, device: torch.device, dtype: torch.dtype, *, local_only: bool = False) -> tuple[Any, Any]:
    """Processor and model from a hub id or a folder, on `device` in `dtype`; from the
    Hugging Face cache alone with `local_only`."""
    Sam3Model, Sam3Processor = _classes()  # noqa: N806 (classes)
    folder = os.path.expanduser(model)
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ModelLoadError(
                f"{option('model', model)}: the folder has no config.json, so it holds no saved SAM 3; "
                f"pass {option('model', 'DIR')} with a folder from `hf download {HUB_ID} --local-dir DIR` "
                f"or save_pretrained"
            )
        model = folder
    elif _looks_like_path(model):
        raise ModelLoadError(
            f"{option('model', model)}: no such folder; pass an existing folder with SAM 3 weights, "
            f"or the hub id {HUB_ID}"
        )
    started = time.perf_counter()
    try:
        # The model first: its errors keep the hub's cause (gated, offline), the processor's don't.
        # SDPA: PyTorch's fused attention (flash kernels on CUDA in half precision), even
        # where a saved config asks for eager attention.
        net = Sam3Model.from_pretrained(model, dtype=dtype, local_files_only=local_only, attn_implementation="sdpa")
        processor = Sam3Processor.from_pretrained(model, local_files_only=local_only)
    except Exception as err:  # any failure here means no usable weights: say which and the fix
        raise ModelLoadError(why_not_loaded(model, err)) from err
    net = net.to(device).eval()  # type: ignore[arg-type]  # transformers types `to` oddly
    log.info("loaded SAM 3 %s on %s (%s) in %.1f s", model, device, dtype_name(dtype), time.perf_counter() - started)
    return processor, net


def _classes() -> tuple[Any, Any]:
    """transformers' SAM 3 classes. A torchvision built for another torch fails as transformers
    imports it, which it reports as "Could not import module 'Sam3Model'": say which versions."""
    try:
        from transformers import Sam3Model, Sam3Processor
    except Exception as err:
        mismatch = _torch_mismatch()
        if mismatch is not None:
            raise ModelLoadError(mismatch) from err
        raise
    return Sam3Model, Sam3Processor


def _torch_mismatch() -> str | None:
    """A one-line reason where torchvision cannot load beside this torch; None where it can."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import torchvision  # noqa: F401
    except ImportError:
        return None  # not installed: transformers' SAM 3 does without it
    except Exception as err:  # "operator torchvision::nms does not exist" and the like
        try:
            versions = f"torch {version('torch')} and torchvision {version('torchvision')}"
        except PackageNotFoundError:
            versions = "torch and torchvision"
        return (f"{versions} do not match ({str(err).splitlines()[0]}): install the torchvision built for "
                f"your torch (for example `pip install torch==X torchvision==Y` from one release)")
    return None


WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")


def revision(model: str, net: Any) -> str:
    """What tells these weights from others: for a hub id, the commit the hub
    gave (transformers records it in the config); for a folder, a hash of its
    config.json and of the names, sizes and modification times of its weight
    files. Not of their contents: hashing 3.4 GB costs 2 s or more at every start,
    and weights replaced by a download or a copy get a new time anyway."""
    folder = os.path.expanduser(model)
    if not os.path.isdir(folder):
        return str(getattr(net.config, "_commit_hash", None) or "unknown")
    digest = hashlib.sha1(open(os.path.join(folder, "config.json"), "rb").read())
    for name in sorted(os.listdir(folder)):
        if name.endswith(WEIGHTS):
            st = os.stat(os.path.join(folder, name))
            digest.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "folder:" + digest.hexdigest()[:16]


def check_hub(model: str) -> bool:
    """For a hub id, ask the hub once, briefly, before transformers does: transformers
    retries every file for ~25 s with log noise when the hub cannot be reached.

    Raises ModelLoadError when the model is not cached and the hub cannot give it
    (HF_HUB_OFFLINE, no answer, gated, not found). Returns True when it is cached but
    the hub cannot be reached, so loading must not ask the hub. Folders are left to
    `_load`; HF_HUB_OFFLINE with a cached model costs no request, other hub ids one.
    """
    if os.path.isdir(os.path.expanduser(model)) or _looks_like_path(model):
        return False
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = isinstance(try_to_load_from_cache(model, "config.json"), str)
    except HFValidationError:
        return False  # not a hub id: transformers says why
    if constants.HF_HUB_OFFLINE:
        if cached:
            return False  # transformers reads the cache alone already
        raise ModelLoadError(_not_cached(model, offline=True))
    answer = _ask_hub(model)
    if cached:
        if answer is None:
            log.info("the Hugging Face hub cannot be reached: loading %s from the cache", model)
        return answer is None
    if answer is None:
        raise ModelLoadError(_not_cached(model, offline=False))
    if isinstance(answer, (GatedRepoError, RepositoryNotFoundError)):
        raise ModelLoadError(why_not_loaded(model, answer)) from answer
    return False


def _ask_hub(model: str, timeout: float = HUB_TIMEOUT) -> BaseException | bool | None:
    """HEAD `model`'s config.json once, no retries: True, the hub's HTTP error, or None
    when no answer came within `timeout` seconds. A thread bounds the wait, since a slow
    DNS lookup escapes the HTTP client's timeout."""
    import threading

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    answer: list[BaseException | bool | None] = [None]

    def head() -> None:
        try:
            get_hf_file_metadata(hf_hub_url(model, "config.json"), timeout=timeout)
            answer[0] = True
        except HfHubHTTPError as err:  # the hub answered: gated, not found, ...
            answer[0] = err
        except Exception as err:  # no answer: DNS, refused, timeout, proxy, TLS
            log.debug("the Hugging Face hub cannot be reached: %s", err)

    probe = threading.Thread(target=head, daemon=True)
    probe.start()
    probe.join(timeout + 0.5)
    return answer[0]


def _not_cached(model: str, *, offline: bool) -> str:
    where = "HF_HUB_OFFLINE=1 is set" if offline else "the hub cannot be reached"
    return (
        f"{option('model', model)}: not in the Hugging Face cache and {where}; download it once online "
        f"(`hf download {model}`; for {HUB_ID} first {LICENCE}), or pass {option('model', 'DIR')}"
    )


def why_not_loaded(model: str, err: BaseException) -> str:
    """One line naming why `model` could not be loaded and the fix."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(e, GatedRepoError) for e in chain):
        return (f"{option('model', model)}: the repository is gated and this account has no access; {LICENCE}, "
                f"or pass {option('model', 'DIR')} (a folder with the downloaded weights)")
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain):
        return _not_cached(model, offline=constants.HF_HUB_OFFLINE)
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return (
            f"{option('model', model)}: neither a local folder nor a model on the Hugging Face hub "
            f"(or a private one: run `hf auth login`); use {HUB_ID} or {option('model', 'DIR')}"
        )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"{option('model', model)}: cannot load SAM 3 weights ({first}); "
            f"pass {option('model', 'DIR')} with a saved SAM 3 or {HUB_ID}")
