"""The bodies of POST /v1/collections/{name}/vectors: JSON with base64 float32, or multipart with
an .npy file part ('vectors', application/x-npy) and a JSON field ('meta': ids, texts, metadata,
space_id). Either way the answer is the same (n, dim) float32 array, checked and unit for
cosine, and the same VectorsMeta."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from embedstack.errors import InvalidInput, SpaceMismatch
from embedstack.serving.schemas import VectorsIn, VectorsMeta
from embedstack.vectors import unit_rows

NPY = "application/x-npy"
MULTIPART = "multipart/form-data"
_HOW = (
    "send JSON (ids + base64 'vectors') or multipart/form-data with a file part 'vectors' "
    "(an .npy file of shape (n, dim)) and a field 'meta' (JSON: ids, texts, metadata, space_id)"
)

# the request body as OpenAPI documents it (the route reads it itself: two content types)
OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VectorsIn.model_json_schema()},
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": ["vectors", "meta"],
                    "properties": {
                        "vectors": {
                            "type": "string",
                            "format": "binary",
                            "description": "an .npy file (numpy.save) of shape (n, dim), float32 "
                            "(float16 and float64 are converted)",
                        },
                        "meta": VectorsMeta.model_json_schema(),
                    },
                },
                "encoding": {
                    "vectors": {"contentType": NPY},
                    "meta": {"contentType": "application/json"},
                },
            },
        },
    }
}


async def read_vectors(request: Request, max_bytes: int) -> tuple[VectorsMeta, bytes, str]:
    """(meta, the vectors' bytes, their format: "base64" or "npy") of a request, undecoded."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == MULTIPART:
        return await _multipart(request, max_bytes)
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise InvalidInput(f"content type {kind!r} is not accepted here: {_HOW}")
    body = _parsed(VectorsIn, await request.body())
    assert isinstance(body, VectorsIn)
    return body, body.vectors.encode("ascii", "replace"), "base64"


async def _multipart(request: Request, max_bytes: int) -> tuple[VectorsMeta, bytes, str]:
    try:
        form = await request.form(max_files=2, max_fields=2, max_part_size=max_bytes)
    except HTTPException as exc:  # Starlette's multipart parser refused the body
        raise InvalidInput(f"the multipart body cannot be read ({exc.detail}): {_HOW}") from None
    try:
        part, meta = form.get("vectors"), form.get("meta")
        if not isinstance(part, UploadFile) or meta is None:
            raise InvalidInput(f"the multipart body lacks a file part 'vectors' or 'meta': {_HOW}")
        raw_meta = await meta.read() if isinstance(meta, UploadFile) else meta.encode()
        data = await part.read()
    finally:
        await form.close()
    return _parsed(VectorsMeta, raw_meta), data, "npy"


def _parsed(model: type[BaseModel], raw: bytes) -> VectorsMeta:
    """`raw` JSON validated as `model`; errors answered as FastAPI answers a bad body (422)."""
    try:
        out = model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    assert isinstance(out, VectorsMeta)
    return out


def decoded(data: bytes, fmt: str, n: int, dim: int, metric: str, where: str) -> np.ndarray:
    """(n, dim) float32 rows, finite, unit for cosine; InvalidInput or SpaceMismatch naming the
    fix (`where`: the collection, for messages)."""
    vecs = _from_npy(data, n, dim, where) if fmt == "npy" else _from_b64(data, n, dim, where)
    finite = np.isfinite(vecs).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise InvalidInput(f"vector {bad} contains NaN or infinity: every component must be finite")
    if metric == "cosine":
        zero = ~np.any(vecs, axis=1)
        if zero.any():
            raise InvalidInput(
                f"vector {int(np.argmax(zero))} is all zeros: a cosine vector needs a direction"
            )
        unit_rows(vecs, out=vecs)
    return vecs


def _from_b64(data: bytes, n: int, dim: int, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("'vectors' is not valid base64: encode the float32 bytes") from None
    if len(raw) != n * dim * 4:
        raise SpaceMismatch(
            f"'vectors' holds {len(raw)} bytes; {n} ids of {dim}-dim float32 vectors need "
            f"{n * dim * 4} ({where})"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(n, dim).astype(np.float32)


def _from_npy(data: bytes, n: int, dim: int, where: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidInput(
            f"the 'vectors' part is not a readable .npy file ({exc}): write it with numpy.save"
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or arr.itemsize not in (2, 4, 8):
        kind = getattr(arr, "dtype", type(arr).__name__)
        raise InvalidInput(f"the 'vectors' array is {kind}: send float32 (or float16/float64)")
    if arr.shape != (n, dim):
        raise SpaceMismatch(
            f"the 'vectors' array has shape {arr.shape}; {n} ids of {dim}-dim vectors need "
            f"({n}, {dim}) ({where})"
        )
    return np.require(arr, np.float32, ["C", "W"])  # np.load of bytes is read-only: copied
