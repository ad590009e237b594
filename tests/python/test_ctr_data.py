"""examples/python/train_ctr.py's data: the three readers on the fixtures
in tests/python/data/ctr (split counts exact, bags, missing values), bad
rows (file, line and what was expected; --skip-bad counts), the cache,
the synthetic generator and the metrics. On the real data sets when
../shared/data holds them (skipped with a message otherwise). No server.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import unittest

import numpy as np

SRC = os.environ.get("CQRPS_SOURCE_DIR",
                     os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "examples", "python"))

from cqrps_ctr import data as D  # noqa: E402
from cqrps_ctr import readers as R  # noqa: E402
from cqrps_ctr import synth as S  # noqa: E402
from cqrps_ctr.train import auc, table_plan  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ctr")
SHARED = os.environ.get("CQRPS_SHARED_DATA") or \
    os.path.join(SRC, "..", "shared", "data")


def uid(users):
    return R.hash_int(np.array(users), 0)


def mid(movies):
    return R.hash_int(np.array(movies), 1)


class Tmp(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cqrps-ctr-test-")

    def tearDown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def copy_ml(self) -> str:
        d = os.path.join(self.tmp, "ml")
        shutil.copytree(os.path.join(FIX, "ml-tiny"), d)
        return d

    def edit(self, path: str, line: int, text: str) -> None:
        """Replaces 1-based line ``line`` (or appends when past the end)."""
        with open(path) as f:
            lines = f.read().splitlines()
        if line <= len(lines):
            lines[line - 1] = text
        else:
            lines.append(text)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


class MovieLensTest(Tmp):
    def test_split_counts_and_order(self) -> None:
        d = R.read_movielens(os.path.join(FIX, "ml-tiny"), None, False)
        # 21 ratings, 3 of them 3s; user 1 keeps 7 (2 train, 5 valid),
        # user 2 keeps 5 (all train), user 3 keeps 6 (1 train, 5 valid).
        self.assertEqual((len(d.train), len(d.valid)), (8, 10))
        self.assertEqual(int(d.train.label.sum()), 6)
        self.assertEqual(int(d.valid.label.sum()), 7)
        # Validation in (user, timestamp) order, ties in file order.
        np.testing.assert_array_equal(d.valid.ids[:, 0],
                                      uid([1] * 5 + [3] * 5))
        np.testing.assert_array_equal(d.valid.ids[:, 1],
                                      mid([3, 5, 1, 2, 4, 3, 2, 4, 5, 1]))
        np.testing.assert_array_equal(d.train.ids[:, 1],
                                      mid([1, 4, 1, 2, 4, 5, 1, 2]))
        self.assertEqual([f.name for f in d.features],
                         ["user", "movie", "gender", "age", "occupation",
                          "zip", "genres"])
        self.assertEqual([f.vocab for f in d.features],
                         [3, 5, 2, 3, 3, 3, 10])
        self.assertTrue(d.features[-1].bag)
        # The first validation row is movie 3: Action|Crime|Thriller.
        vals, ptr = d.valid.bags[0]
        np.testing.assert_array_equal(
            vals[ptr[0]:ptr[1]],
            D.hash_bytes(np.array([b"Action", b"Crime", b"Thriller"]), 6))
        b = d.valid.take(np.array([1, 0]))  # movie 5 (2 genres), movie 3
        self.assertEqual(b.bags[0][1].tolist(), [0, 2])
        self.assertEqual(len(b.bags[0][0]), 5)

    def test_bad_rows(self) -> None:
        d = self.copy_ml()
        ratings = os.path.join(d, "ratings.dat")
        cases = [
            (4, "1::4::x::103", "ratings.dat:4: expected a rating of 1..5, "
                                "got 'x'"),
            (4, "1::4::103", "ratings.dat:4: expected UserID::MovieID::"
                             "Rating::Timestamp (4 fields separated by "
                             "'::'), got 3 field(s)"),
            (7, "9::1::5::1", "ratings.dat:7: expected a UserID listed in "
                              "users.dat, got '9'"),
            (2, "1::2::6::101", "ratings.dat:2: expected a rating of 1..5"),
        ]
        for line, text, want in cases:
            shutil.copy(os.path.join(FIX, "ml-tiny", "ratings.dat"), ratings)
            self.edit(ratings, line, text)
            with self.assertRaises(D.BadData) as cm:
                R.read_movielens(d, None, False)
            self.assertIn(want, str(cm.exception))
            self.assertIn("--skip-bad", str(cm.exception))
        # --skip-bad: line 4 (user 1, kept) and a trailing bad line go.
        shutil.copy(os.path.join(FIX, "ml-tiny", "ratings.dat"), ratings)
        self.edit(ratings, 4, "1::4::x::103")
        self.edit(ratings, 30, "garbage")
        s = R.read_movielens(d, None, True)
        self.assertEqual(s.bad_rows, 2)
        # user 1 now keeps 6 rows: 1 train, 5 valid.
        self.assertEqual((len(s.train), len(s.valid)), (7, 10))

    def test_users_file_errors(self) -> None:
        d = self.copy_ml()
        self.edit(os.path.join(d, "users.dat"), 2, "2::M::56::16")
        with self.assertRaises(D.BadData) as cm:
            R.read_movielens(d, None, False)
        self.assertIn("users.dat:2: expected UserID::Gender::Age::"
                      "Occupation::Zip-code", str(cm.exception))

    def test_valid_file_replaces_split(self) -> None:
        d = self.copy_ml()
        v = os.path.join(self.tmp, "valid.dat")
        with open(v, "w") as f:
            f.write("1::2::4::999\n2::3::1::999\n3::5::3::999\n")
        s = R.read_movielens(d, v, False)
        self.assertEqual((len(s.train), len(s.valid)), (18, 2))

    def test_real_data(self) -> None:
        path = os.path.join(SHARED, "ml-1m-partial")
        if not os.path.exists(os.path.join(path, "ratings.dat")):
            self.skipTest(f"ml-1m-partial not found at {path}")
        d, _ = R.load("movielens-1m", path, cache_dir=self.tmp)
        # ../shared/reference/ml-1m-partial.md
        self.assertEqual((len(d.train), len(d.valid)), (345439, 14995))
        self.assertAlmostEqual(float(d.train.label.mean()), 0.7749, places=4)
        self.assertAlmostEqual(float(d.valid.label.mean()), 0.7635, places=4)
        self.assertEqual({f.name: f.vocab for f in d.features},
                         {"user": 2999, "movie": 3568, "gender": 2, "age": 7,
                          "occupation": 21, "zip": 2006, "genres": 18})
        self.assertEqual(int(np.diff(d.train.bags[0][1]).max()), 6)
        plan = table_plan(d.features, "cqr", 256, "t")
        self.assertEqual([t.kind for t in plan],
                         ["cqr", "cqr", "full", "full", "full", "cqr",
                          "full"])
        self.assertEqual(plan[0].rows, 128)


class CriteoLibfmTest(Tmp):
    def test_criteo_fixture(self) -> None:
        d = R.read_criteo(os.path.join(FIX, "criteo-tiny.txt"), None, False)
        self.assertEqual((len(d.train), len(d.valid)), (18, 2))
        self.assertEqual((int(d.train.label.sum()), int(d.valid.label.sum())),
                         (4, 1))
        self.assertEqual(d.ndense, 13)
        self.assertEqual(len(d.features), 26)
        # Row 1: I1=1, I2=-1 (clipped to 0), I3 missing (0), I4=17.
        np.testing.assert_allclose(d.train.dense[0, :4],
                                   np.log1p([1, 0, 0, 17]), rtol=1e-6)
        # A missing categorical is one ID per feature, not shared.
        miss = [D.hash_bytes(np.array([b""]), j)[0] for j in range(26)]
        self.assertEqual(len(set(miss)), 26)
        # Row 1 has C22 and C25 empty.
        self.assertEqual((d.train.ids[0, 21], d.train.ids[0, 24]),
                         (miss[21], miss[24]))
        self.assertNotEqual(d.train.ids[0, 25], miss[25])

    def test_criteo_bad_rows(self) -> None:
        p = os.path.join(self.tmp, "c.txt")
        for line, mutate, want in [
            (3, lambda f: f[:-1], "c.txt:3: expected label, 13 integers and "
                                  "26 categorical values (40 fields "
                                  "separated by '\\t'), got 39"),
            (5, lambda f: ["2"] + f[1:], "c.txt:5: expected a label of 0 or "
                                         "1, got '2'"),
            (6, lambda f: f[:2] + ["abc"] + f[3:], "c.txt:6: expected an "
             "integer or nothing in column 3 (I2), got 'abc'"),
        ]:
            with open(os.path.join(FIX, "criteo-tiny.txt")) as f:
                lines = f.read().splitlines()
            lines[line - 1] = "\t".join(mutate(lines[line - 1].split("\t")))
            with open(p, "w") as f:
                f.write("\n".join(lines) + "\n")
            with self.assertRaises(D.BadData) as cm:
                R.read_criteo(p, None, False)
            self.assertIn(want, str(cm.exception))
            s = R.read_criteo(p, None, True)
            self.assertEqual(s.bad_rows, 1)
            self.assertEqual(len(s.train) + len(s.valid), 19)

    def test_libfm(self) -> None:
        src = os.path.join(FIX, "libfm-tiny.txt")
        d = R.read_libfm(src, None, False)
        self.assertEqual((len(d.train), len(d.valid)), (27, 3))
        self.assertEqual((int(d.train.label.sum()), int(d.valid.label.sum())),
                         (9, 1))
        self.assertEqual([f.name for f in d.features], ["f1", "f2", "f3"])
        # Feature 2's ID hashes (1, idx): "103:1" and "103:0.5" agree.
        self.assertEqual(d.train.ids[0, 1],
                         D.hash_bytes(np.array([b"103"]), 1)[0])
        v = os.path.join(self.tmp, "v.txt")
        with open(v, "w") as f:
            f.write("1 1:1 100:1 200:0.5\n")
        self.assertEqual(len(R.read_libfm(src, v, False).valid), 1)
        p = os.path.join(self.tmp, "l.txt")
        shutil.copy(src, p)
        self.edit(p, 7, "1 1:1 100:1")
        with self.assertRaises(D.BadData) as cm:
            R.read_libfm(p, None, False)
        self.assertIn("l.txt:7: expected 'label idx:val ...' with 3 idx:val "
                      "fields", str(cm.exception))
        self.edit(p, 7, "1 1:1 100 200:1")
        with self.assertRaises(D.BadData) as cm:
            R.read_libfm(p, None, False)
        self.assertIn("l.txt:7: expected idx:val in field 2, got '100'",
                      str(cm.exception))
        self.edit(p, 9, "yes 1:1 100:1 200:1")
        self.assertEqual(R.read_libfm(p, None, True).bad_rows, 2)

    def test_real_criteo(self) -> None:
        path = os.path.join(SHARED, "criteo-sample", "train.txt")
        if not os.path.exists(path):
            self.skipTest(f"criteo-sample not found at {path}")
        d = R.read_criteo(path, None, False)
        self.assertEqual((len(d.train), len(d.valid)), (9720, 1080))
        self.assertEqual(int(d.train.label.sum() + d.valid.label.sum()), 2112)

    def test_cache(self) -> None:
        src = os.path.join(FIX, "criteo-tiny.txt")
        a, hit = R.load("criteo", src, cache_dir=self.tmp)
        self.assertFalse(hit)
        b, hit = R.load("criteo", src, cache_dir=self.tmp)
        self.assertTrue(hit)
        np.testing.assert_array_equal(a.train.ids, b.train.ids)
        np.testing.assert_array_equal(a.valid.dense, b.valid.dense)
        self.assertEqual(a.features, b.features)
        c, hit = R.load("criteo", src, skip_bad=True, cache_dir=self.tmp)
        self.assertFalse(hit)  # other options, other entry


class SynthAndMetricsTest(unittest.TestCase):
    def test_synthetic(self) -> None:
        d = S.synthetic(10000, 100000, seed=0)
        self.assertEqual((len(d.train), len(d.valid)), (9000, 1000))
        self.assertEqual(len(d.features), 26)
        self.assertEqual(sum(f.vocab for f in d.features),
                         sum(S.vocab_sizes(100000)))
        rows = np.array([5, 17, 3])
        a, b = d.train.take(rows), d.train.take(rows[::-1])
        np.testing.assert_array_equal(a.label, b.label[::-1])
        np.testing.assert_array_equal(a.ids[7], b.ids[7][::-1])
        self.assertEqual(a.dense.shape, (3, 13))
        big = d.train.take(np.arange(9000))
        self.assertTrue(0.15 < float(big.label.mean()) < 0.4)
        for j, f in enumerate(d.features):
            self.assertLessEqual(int(big.index[j].max()), f.vocab - 1)

    def test_auc(self) -> None:
        z = np.array([0.1, 0.4, 0.35, 0.8, 0.4], np.float32)
        y = np.array([0, 0, 1, 1, 1], np.float32)
        self.assertAlmostEqual(auc(z, y), 4.5 / 6)


if __name__ == "__main__":
    unittest.main()
