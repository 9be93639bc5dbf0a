"""TensorBoard event files without TensorFlow: scalars only, written by hand.

An event file is a TFRecord stream (length, masked CRC32C of the length, payload, masked CRC32C of the
payload) of `Event` protocol buffers. We only need three fields of `Event` (wall_time, step, summary)
and two of `Summary.Value` (tag, simple_value), so we encode the wire format directly instead of
depending on TensorFlow or on generated protobuf classes.
"""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import time
from collections.abc import Mapping

_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, summary: bytes | None = None, file_version: str | None = None) -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if summary is not None:
        out += _field_bytes(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


class ScalarEventWriter:
    """Writes `{tag: float}` scalars per step to `logdir/events.out.tfevents.*`, flushed per call."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._file = open(self.path, "ab", buffering=0)
        self._file.write(_record(_event(time.time(), 0, file_version="brain.Event:2")))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        values = b"".join(
            _field_bytes(1, _scalar_value(tag, float(v)))
            for tag, v in scalars.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        if values:
            self._file.write(_record(_event(time.time(), int(step), summary=values)))

    def close(self) -> None:
        self._file.close()
