"""cqrps/_lib.py mirrors every struct of cqrps.h: the sizes and field
offsets ctypes computes equal the C compiler's (printed by abi_layout,
built by CMake from tests/python/abi_layout.c)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import unittest
from typing import Dict

from cqrps import _lib


def c_layout() -> Dict[str, int]:
    exe = os.environ.get("CQRPS_ABI_LAYOUT_BIN")
    if not exe:
        raise unittest.SkipTest("CQRPS_ABI_LAYOUT_BIN not set (run through "
                                "ctest)")
    out = subprocess.run([exe], check=True, capture_output=True, text=True,
                         timeout=30).stdout
    layout = {}
    for line in out.splitlines():
        parts = line.split()
        key = " ".join(parts[:-1])
        layout[key] = int(parts[-1])
    return layout


class AbiTest(unittest.TestCase):

    def test_structs(self) -> None:
        layout = c_layout()
        for cname, cls in _lib.STRUCTS.items():
            with self.subTest(struct=cname):
                self.assertEqual(ctypes.sizeof(cls), layout[f"{cname} size"])
                fields = [f[0] for f in cls._fields_]
                c_fields = [k.split(".", 1)[1] for k in layout
                            if k.startswith(cname + ".")]
                self.assertEqual(fields, c_fields)
                for f in fields:
                    self.assertEqual(getattr(cls, f).offset,
                                     layout[f"{cname}.{f}"], f)

    def test_enums_are_ints(self) -> None:
        layout = c_layout()
        for e in ("cqrps_kind_t", "cqrps_optimizer_t", "cqrps_pooling_t",
                  "cqrps_phase_state_t"):
            self.assertEqual(layout[f"{e} size"],
                             ctypes.sizeof(_lib.c_enum))


if __name__ == "__main__":
    unittest.main()
