"""An AOTInductor package's model called through the C entry points of its shared library, with Python's
interpreter lock released for the pass (ctypes releases it around foreign calls). torch's loader binding
holds the lock for the whole pass: while a 1024 px photo was translated, the app's page took up to
3.3 s to answer another visitor (eager: 21 ms). Used by backends.load; anything it cannot take (no
single library in the package, weights kept beside it, a library that does not load) is a ValueError
or OSError, and the loader serves instead."""
from __future__ import annotations

import ctypes
import os
import tempfile
import weakref
import zipfile

import torch

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype, _get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype, _new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class NativeModel:
    """The one-input, one-output model of `package` (a .pt2 whose weights are inside its library)."""

    def __init__(self, package: str | os.PathLike) -> None:
        with zipfile.ZipFile(package) as archive:
            names = archive.namelist()
            libraries = [n for n in names if n.endswith(".so")]
            if len(libraries) != 1 or any("/data/weights/" in n or "/data/constants/" in n for n in names):
                raise ValueError(f"{package}: not one library holding its weights")
            with tempfile.NamedTemporaryFile(suffix=".so") as copy:  # unlinked once loaded: nothing left behind
                copy.write(archive.read(libraries[0]))
                copy.flush()
                self.library = ctypes.CDLL(copy.name)
        run = self.library.AOTInductorModelContainerRun
        run.restype = ctypes.c_int32
        run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                        ctypes.c_void_p, ctypes.c_void_p]
        self.handle = ctypes.c_void_p()
        self._check(self.library.AOTInductorModelContainerCreateWithDevice(
            ctypes.byref(self.handle), ctypes.c_size_t(1), b"cpu", None), "create")
        weakref.finalize(self, self.library.AOTInductorModelContainerDelete, self.handle)
        counts = []
        for name in ("GetNumInputs", "GetNumOutputs"):
            count = ctypes.c_size_t()
            self._check(getattr(self.library, f"AOTInductorModelContainer{name}")(self.handle, ctypes.byref(count)), name)
            counts.append(count.value)
        if counts != [1, 1]:
            raise ValueError(f"{package}: {counts[0]} inputs and {counts[1]} outputs, not one of each")

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"AOTInductor {what} failed (code {code})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # A new handle of `x` that the run takes over; the output's handle is the caller's to take over.
        (handle,) = torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors([x])
        inputs = (ctypes.c_void_p * 1)(_get_pointer(handle, None))
        outputs = (ctypes.c_void_p * 1)()
        self._check(self.library.AOTInductorModelContainerRun(self.handle, inputs, 1, outputs, 1, None, None), "run")
        return torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_new_capsule(outputs[0], None, None)])[0]
