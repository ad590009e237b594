"""Round trips of every cqrps.Client call against a real cqrps-server, and
the errors they raise (classes, codes, wire names, server messages)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import unittest

import numpy as np

import cqrps
from cqrps import _lib
from server_proc import Server, ServerTestCase

DIM = 8


class ClientTest(ServerTestCase):
    """One server for the class; each test makes its own tables."""

    def setUp(self) -> None:
        self.c = cqrps.connect(self.server.addr, request_timeout=20)
        self.made: list = []

    def tearDown(self) -> None:
        for name in self.made:
            try:
                self.c.drop_table(name)
            except cqrps.NotFound:
                pass
        self.c.close()

    def table(self, name: str, **kw) -> cqrps.TableInfo:
        kw.setdefault("kind", "full")
        kw.setdefault("dim", DIM)
        info = self.c.create_table(name, **kw)
        self.made.append(name)
        return info

    # ---- connecting ----

    def test_server_info(self) -> None:
        si = self.c.server_info()
        self.assertEqual(si.protocol_version, cqrps.PROTOCOL_VERSION)
        self.assertRegex(si.server_version, r"^\d+\.\d+")
        self.assertGreater(si.max_batch, 0)
        self.assertGreater(si.max_frame_bytes, 0)
        self.assertEqual(self.c.shard_count, 1)

    def test_connect_refused(self) -> None:
        with Server() as srv:
            addr = srv.addr
        with self.assertRaises(cqrps.ConnectionFailed) as cm:
            cqrps.connect(addr, connect_timeout=2)
        e = cm.exception
        self.assertEqual(e.code, -17)
        self.assertEqual(e.name, "CONNECTION")
        self.assertIn(addr, e.message)
        self.assertIsInstance(e, ConnectionError)

    def test_connect_bad_address(self) -> None:
        with self.assertRaises(cqrps.InvalidArgument) as cm:
            cqrps.connect("no-port-here")
        self.assertEqual(cm.exception.code, -1)
        self.assertIn("no-port-here", str(cm.exception))

    def test_connect_options_and_context_manager(self) -> None:
        with cqrps.connect([self.server.addr], token=None, admin_token=None,
                           connect_timeout=1.5, request_timeout=None,
                           client_name="py-test", reconnect=False,
                           max_batch=1000) as c:
            self.assertFalse(c.closed)
            self.assertEqual(c.server_info().protocol_version, 1)
        self.assertTrue(c.closed)
        c.close()  # idempotent
        with self.assertRaises(cqrps.Error):
            c.list_tables()

    # ---- tables ----

    def test_create_describe_list_drop(self) -> None:
        info = self.table("py.t1", kind="cqr", dim=16, chunks=4, rows=32,
                          seed=7, optimizer="adagrad", lr=0.05,
                          weight_decay=0.001, cluster_iters=5,
                          cluster_sample=50, reset_optimizer=True,
                          init_scale=0.1, schedule_every=0)
        cfg = info.config
        self.assertEqual((info.name, cfg.kind, cfg.dim, cfg.chunks, cfg.rows,
                          cfg.seed, cfg.optimizer),
                         ("py.t1", "cqr", 16, 4, 32, 7, "adagrad"))
        self.assertEqual((cfg.lr, cfg.weight_decay, cfg.init_scale),
                         (0.05, 0.001, 0.1))
        self.assertEqual((cfg.cluster_iters, cfg.cluster_sample), (5, 50))
        self.assertTrue(cfg.reset_optimizer)
        self.assertEqual(info.kind, "cqr")
        self.assertEqual(info.dim, 16)
        # Defaults are filled by the server.
        d = self.table("py.t0", kind=cqrps.Kind.CE, dim=8)
        self.assertEqual((d.config.chunks, d.config.rows, d.config.optimizer,
                          d.config.lr), (4, 1024, "adam", 0.001))
        self.assertEqual((d.config.beta1, d.config.beta2, d.config.eps),
                         (0.9, 0.999, 1e-8))
        self.assertEqual(self.c.describe_table("py.t1"), info)
        self.assertEqual(self.c.table_dim("py.t1"), 16)
        names = [t.name for t in self.c.list_tables()]
        self.assertEqual(names, sorted(names))
        self.assertIn("py.t1", names)
        self.c.drop_table("py.t1")
        self.assertNotIn("py.t1", [t.name for t in self.c.list_tables()])
        with self.assertRaises(cqrps.NotFound) as cm:
            self.c.describe_table("py.t1")
        self.assertEqual((cm.exception.code, cm.exception.name),
                         (-3, "NOT_FOUND"))
        self.assertIn("py.t1", cm.exception.message)
        with self.assertRaises(cqrps.NotFound):
            self.c.drop_table("py.t1")

    def test_cluster_cancel(self) -> None:
        # A phase of minutes unless cancelled: 10,000 iterations, no
        # tolerance, 20,000 IDs, k = 1024.
        self.table("py.slow", kind="cqr", rows=1024, chunks=2,
                   cluster_iters=10000, cluster_tol=0)
        ids = np.arange(1, 20001, dtype=np.uint64) * 7919
        rng = np.random.default_rng(4)
        self.c.push("py.slow", ids,
                    rng.standard_normal((20000, DIM)).astype(np.float32))
        before = self.c.digest("py.slow")
        with self.assertRaises(cqrps.NoSuchPhase):
            self.c.cluster_cancel("py.slow")
        st = self.c.cluster("py.slow", wait=False)
        got = self.c.cluster_cancel("py.slow")
        self.assertEqual(got.phase_id, st.phase_id)
        self.assertIn(got.state, ("queued", "running"))
        with self.assertRaises(cqrps.Cancelled) as cm:
            self.c.cluster_wait("py.slow", st.phase_id, timeout=60)
        self.assertEqual((cm.exception.code, cm.exception.name),
                         (-21, "CANCELLED"))
        fin = self.c.cluster_status("py.slow", st.phase_id)
        self.assertTrue(fin.failed)
        self.assertTrue(fin.cancelled)
        self.assertEqual(fin.error, "cancelled: by request")
        self.assertEqual(self.c.digest("py.slow"), before)
        self.assertEqual(self.c.describe_table("py.slow").phases_done, 0)

    def test_defaults(self) -> None:
        # No tuning keyword: the server's defaults, as the README says
        # ("Defaults"): init 0.01 for every kind, the optimizer reset at
        # each phase for cqr only, k-means at most 25 iterations with
        # tolerance 1e-3 and 200 samples per centroid.
        for kind in ("full", "hash", "ce", "cqr"):
            cf = self.table(f"py.def.{kind}", kind=kind).config
            self.assertAlmostEqual(cf.init_scale, 0.01, places=7)
            self.assertEqual(cf.reset_optimizer, kind == "cqr")
            self.assertAlmostEqual(cf.cluster_tol, 1e-3, places=7)
            self.assertEqual((cf.cluster_iters, cf.cluster_sample), (25, 200))

    def test_cluster_settings(self) -> None:
        # The reset setting and the k-means tolerance: None asks for the
        # server's default, False/0 turn them off, and the effective value
        # comes back.
        off = self.table("py.off", kind="cqr", reset_optimizer=False,
                         cluster_tol=0).config
        self.assertFalse(off.reset_optimizer)
        self.assertEqual(off.cluster_tol, -1.0)
        on = self.table("py.on", kind="cqr", reset_optimizer=True,
                        cluster_tol=0.05).config
        self.assertTrue(on.reset_optimizer)
        self.assertAlmostEqual(on.cluster_tol, 0.05, places=6)
        with self.assertRaises(cqrps.InvalidArgument):
            self.table("py.bad", kind="cqr", cluster_tol=1.5)

    def test_admission_eviction(self) -> None:
        # Issue 19: create kwargs, the effective config and the counters.
        t = self.table("py.adm", kind="cqr", rows=64, admit_after=2,
                       evict_after_phases=1)
        self.assertEqual((t.config.admit_after, t.config.evict_after_phases),
                         (2, 1))
        self.assertEqual(t.sketch_bytes, 1 << 20)
        ids = np.arange(1, 11, dtype=np.uint64)
        g = np.full((10, DIM), 0.1, dtype=np.float32)
        self.c.push("py.adm", ids, g)
        self.assertEqual(self.c.describe_table("py.adm").known_ids, 0)
        self.c.push("py.adm", ids[:4], g[:4])
        info = self.c.describe_table("py.adm")
        self.assertEqual((info.known_ids, info.ids_admitted), (4, 4))
        self.c.cluster("py.adm")
        self.c.push("py.adm", ids[:1], g[:1])
        self.c.cluster("py.adm")
        info = self.c.describe_table("py.adm")
        self.assertEqual((info.known_ids, info.ids_evicted), (1, 3))
        with self.assertRaises(cqrps.InvalidArgument):
            self.table("py.adm.bad", kind="cqr", max_ids=5)
        # Full tables: fallback rows until the 2nd push, then at most 3.
        f = self.table("py.admf", kind="full", admit_after=2, max_ids=3,
                       ttl_seconds=3600)
        self.assertEqual((f.config.max_ids, f.config.ttl_seconds), (3, 3600))
        self.c.push("py.admf", ids[:5], g[:5])
        self.assertEqual(self.c.describe_table("py.admf").known_ids, 0)
        for j in range(5):  # one by one: the push's own IDs are kept
            self.c.push("py.admf", ids[j:j + 1], g[j:j + 1])
        info = self.c.describe_table("py.admf")
        self.assertEqual((info.known_ids, info.ids_admitted,
                          info.ids_evicted), (3, 5, 2))

    def test_every_kind_and_optimizer(self) -> None:
        for kind in ("full", "hash", "ce", "cqr"):
            for opt in ("sgd", "adagrad", "adam"):
                name = f"py.k.{kind}.{opt}"
                info = self.table(name, kind=kind, optimizer=opt, rows=64)
                self.assertEqual((info.kind, info.config.optimizer),
                                 (kind, opt))
                ids = np.array([1, 2, 3], dtype=np.uint64)
                self.c.push(name, ids, np.ones((3, DIM), np.float32))
                self.assertEqual(self.c.lookup(name, ids).shape, (3, DIM))

    def test_create_errors(self) -> None:
        self.table("py.dup")
        with self.assertRaises(cqrps.AlreadyExists) as cm:
            self.c.create_table("py.dup", kind="full", dim=DIM)
        self.assertEqual((cm.exception.code, cm.exception.name),
                         (-4, "ALREADY_EXISTS"))
        # Rejected by the server, with its reason.
        with self.assertRaises(cqrps.InvalidArgument) as cm:
            self.c.create_table("py.bad", kind="cqr", dim=10, chunks=4)
        self.assertEqual(cm.exception.code, -1)
        self.assertTrue(cm.exception.message)
        # Rejected before the call.
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.create_table("py.bad", kind="bogus", dim=8)
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.create_table("py.bad", kind="full", dim=0)
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.create_table("py.bad", kind="full", dim=8,
                                optimizer="lbfgs")
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.create_table("", kind="full", dim=8)
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.create_table("x" * 256, kind="full", dim=8)
        self.assertNotIn("py.bad", [t.name for t in self.c.list_tables()])

    # ---- lookups and pushes ----

    def test_lookup_shapes_and_id_types(self) -> None:
        self.table("py.look")
        ref = self.c.lookup("py.look", np.array([5, 6, 7], dtype=np.uint64))
        self.assertEqual((ref.shape, ref.dtype), ((3, DIM), np.float32))
        self.assertTrue(ref.flags.c_contiguous)
        np.testing.assert_array_equal(self.c.lookup("py.look", [5, 6, 7]),
                                      ref)
        for dt in (np.int64, np.int32, np.uint32, np.uint16):
            np.testing.assert_array_equal(
                self.c.lookup("py.look", np.array([5, 6, 7], dtype=dt)), ref)
        # Any shape: ids.shape + (dim,).
        two = self.c.lookup("py.look", np.array([[5, 6], [7, 5]]))
        self.assertEqual(two.shape, (2, 2, DIM))
        np.testing.assert_array_equal(two[1, 0], ref[2])
        # int64 is reinterpreted bit for bit: -1 is 2**64 - 1.
        big = [2**64 - 1, 2**63, 12345678901234567890]
        np.testing.assert_array_equal(
            self.c.lookup("py.look", np.array([-1, -2**63], dtype=np.int64)),
            self.c.lookup("py.look", big[:2]))
        self.assertEqual(self.c.lookup("py.look", big).shape, (3, DIM))
        # Empty.
        self.assertEqual(self.c.lookup("py.look", []).shape, (0, DIM))
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.lookup("py.look", [1.5, 2.0])
        with self.assertRaises(cqrps.NotFound):
            self.c.lookup("py.missing", [1])

    def test_zero_copy(self) -> None:
        self.table("py.zc")
        ids = np.arange(100, dtype=np.int64)
        self.assertTrue(np.shares_memory(cqrps.as_ids(ids), ids))
        u = np.arange(100, dtype=np.uint64)
        self.assertIs(cqrps.as_ids(u), u)
        out = np.zeros((100, DIM), np.float32)
        res = self.c.lookup("py.zc", ids, out=out)
        self.assertIs(res, out)
        np.testing.assert_array_equal(out, self.c.lookup("py.zc", ids))
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.lookup("py.zc", ids, out=np.zeros((100, DIM), np.float64))
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.lookup("py.zc", ids, out=np.zeros((99, DIM), np.float32))

    def test_push_sgd_exact(self) -> None:
        lr = 0.25
        self.table("py.sgd", optimizer="sgd", lr=lr)
        ids = np.array([3, 9, 3, 11], dtype=np.uint64)  # 3 twice: summed
        rng = np.random.default_rng(1)
        g = rng.standard_normal((4, DIM)).astype(np.float32)
        before = self.c.lookup("py.sgd", [3, 9, 11])
        self.c.push("py.sgd", ids, g)
        after = self.c.lookup("py.sgd", [3, 9, 11])
        gsum = np.stack([g[0] + g[2], g[1], g[3]])
        np.testing.assert_allclose(after, before - np.float32(lr) * gsum,
                                   rtol=0, atol=1e-6)
        # Gradients in float64 or as nested lists are converted.
        self.c.push("py.sgd", [9], g[1:2].astype(np.float64).tolist())
        info = self.c.describe_table("py.sgd")
        self.assertEqual((info.known_ids, info.pushes), (3, 5))

    def test_push_errors(self) -> None:
        self.table("py.perr")
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.push("py.perr", [1, 2], np.zeros((2, DIM + 1), np.float32))
        bad = np.zeros((2, DIM), np.float32)
        bad[1, 3] = np.nan
        digest = self.c.digest("py.perr")
        with self.assertRaises(cqrps.NonFinite) as cm:
            self.c.push("py.perr", [1, 2], bad)
        e = cm.exception
        self.assertEqual((e.code, e.name), (-6, "NON_FINITE"))
        self.assertIsInstance(e, ValueError)
        self.assertTrue(e.message)
        bad[1, 3] = np.inf
        with self.assertRaises(cqrps.NonFinite):
            self.c.push("py.perr", [1, 2], bad)
        self.assertEqual(self.c.digest("py.perr"), digest)

    def test_pooled(self) -> None:
        lr = 0.5
        self.table("py.pool", optimizer="sgd", lr=lr)
        ids = np.array([1, 2, 3, 4, 4, 5], dtype=np.uint64)
        offsets = [0, 2, 2, 5]  # bags [1,2] [] [3,4,4] [5]
        rows = self.c.lookup("py.pool", ids)
        bags = [rows[0:2], rows[2:2], rows[2:5], rows[5:6]]
        want_sum = np.stack([b.sum(0) if len(b) else np.zeros(DIM, np.float32)
                             for b in bags])
        want_mean = np.stack([b.mean(0) if len(b)
                              else np.zeros(DIM, np.float32) for b in bags])
        np.testing.assert_allclose(
            self.c.lookup_pooled("py.pool", ids, offsets), want_sum,
            atol=1e-6)
        np.testing.assert_allclose(
            self.c.lookup_pooled("py.pool", ids, offsets, pooling="mean"),
            want_mean, atol=1e-6)
        np.testing.assert_allclose(
            self.c.lookup_pooled("py.pool", ids, np.array(offsets, np.int64),
                                 pooling=cqrps.Pooling.SUM), want_sum,
            atol=1e-6)
        # push_pooled, mean: every ID of bag b gets g_b / |b|.
        g = np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM) / 10
        before = self.c.lookup("py.pool", [1, 2, 3, 4, 5])
        self.c.push_pooled("py.pool", ids, offsets, g, pooling="mean")
        after = self.c.lookup("py.pool", [1, 2, 3, 4, 5])
        per_id = np.stack([g[0] / 2, g[0] / 2, g[2] / 3, 2 * g[2] / 3, g[3]])
        np.testing.assert_allclose(after, before - lr * per_id, atol=1e-6)
        # ... and sum: every ID gets g_b.
        self.c.push_pooled("py.pool", ids, offsets, g, pooling="sum")
        after2 = self.c.lookup("py.pool", [1, 2, 3, 4, 5])
        per_id = np.stack([g[0], g[0], g[2], 2 * g[2], g[3]])
        np.testing.assert_allclose(after2, after - lr * per_id, atol=1e-6)
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.lookup_pooled("py.pool", ids, [0, 7])
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.lookup_pooled("py.pool", ids, [0, 2], pooling="max")
        with self.assertRaises(cqrps.InvalidArgument):
            self.c.push_pooled("py.pool", ids, [0, 2], np.zeros((3, DIM)))

    def test_async(self) -> None:
        self.table("py.async", optimizer="sgd", lr=1.0)
        ids = np.arange(50, dtype=np.uint64)
        t1 = self.c.lookup_start("py.async", ids)
        t2 = self.c.lookup_pooled_start("py.async", ids, [0, 10], "mean")
        a, b = t1.wait(), t2.wait()
        np.testing.assert_array_equal(a, self.c.lookup("py.async", ids))
        self.assertEqual(b.shape, (2, DIM))
        with self.assertRaises(cqrps.InvalidArgument):
            t1.wait()
        g = np.ones((50, DIM), np.float32)
        p1 = self.c.push_start("py.async", ids, g)
        p2 = self.c.push_pooled_start("py.async", ids, [0], g[:1], "sum")
        self.assertIsNone(p1.wait())
        self.assertIsNone(p2.wait())
        np.testing.assert_allclose(self.c.lookup("py.async", ids), a - 2,
                                   atol=1e-6)
        # A missing table fails at the start; no ticket is created.
        with self.assertRaises(cqrps.NotFound):
            self.c.lookup_start("py.missing.async", [1])

    # ---- cluster phases ----

    def test_cluster(self) -> None:
        self.table("py.cq", kind="cqr", rows=16, cluster_iters=5)
        rng = np.random.default_rng(2)
        ids = np.arange(400, dtype=np.uint64)
        self.c.push("py.cq", ids,
                    rng.standard_normal((400, DIM)).astype(np.float32))
        with self.assertRaises(cqrps.NoSuchPhase) as cm:
            self.c.cluster_status("py.cq")
        self.assertEqual(cm.exception.code, -20)
        st = self.c.cluster("py.cq")  # wait=True
        self.assertTrue(st.done)
        self.assertFalse(st.failed)
        self.assertEqual(st.state, "done")
        self.assertEqual(st.ids_assigned, 400)
        self.assertGreaterEqual(st.seconds, 0)
        self.assertEqual(self.c.describe_table("py.cq").phases_done, 1)
        st2 = self.c.cluster("py.cq", wait=False)
        self.assertIn(st2.state, ("queued", "running", "done"))
        self.assertEqual(st2.phase_id, st.phase_id + 1)
        fin = self.c.cluster_wait("py.cq", st2.phase_id, timeout=60)
        self.assertTrue(fin.done)
        self.assertEqual(self.c.cluster_status("py.cq").phase_id,
                         st2.phase_id)
        self.assertEqual(self.c.cluster_status("py.cq", st.phase_id).state,
                         "done")
        self.assertEqual(self.c.describe_table("py.cq").phases_done, 2)
        self.assertEqual((st.chunks, st.chunk, st.iters), (4, 4, 5))
        self.assertTrue(1 <= st.kmeans_iters <= 5)
        self.assertEqual((st.eta_seconds, st.cancelled), (0.0, False))
        self.table("py.notcq", kind="ce")
        with self.assertRaises(cqrps.Unsupported) as cm:
            self.c.cluster("py.notcq")
        self.assertEqual((cm.exception.code, cm.exception.name),
                         (-15, "UNSUPPORTED"))
        with self.assertRaises(cqrps.NotFound):
            self.c.cluster("py.missing")

    # ---- server state ----

    def test_stats_digest(self) -> None:
        self.table("py.st", optimizer="sgd")
        d0 = self.c.digest("py.st")
        self.assertRegex(d0, r"^[0-9a-f]{16}$")
        self.assertEqual(self.c.digest("py.st"), d0)
        self.c.lookup("py.st", [1, 2])
        self.assertEqual(self.c.digest("py.st"), d0)  # lookups change nothing
        self.c.push("py.st", [1], np.ones((1, DIM), np.float32))
        self.assertNotEqual(self.c.digest("py.st"), d0)
        s = self.c.stats()
        self.assertGreater(s.requests, 0)
        self.assertGreaterEqual(s.connections, 1)
        self.assertGreater(s.uptime_seconds, 0)
        self.assertGreater(s.bytes_in, 0)
        self.assertEqual(s.server_version, self.c.server_info().server_version)
        t = {x.name: x for x in s.tables}["py.st"]
        self.assertEqual((t.lookups, t.pushes, t.known_ids), (2, 1, 1))
        self.assertTrue(s.counters)
        # Whole-number counts come as exact ints, seconds as floats.
        self.assertTrue(all(isinstance(v, (int, float))
                            for v in s.counters.values()))
        self.assertIsInstance(s.counters["requests"], int)
        with self.assertRaises(cqrps.NotFound):
            self.c.digest("py.missing")

    def test_checkpoint(self) -> None:
        # This server runs without --data-dir: checkpoints are refused
        # with UNSUPPORTED. A server with persistence returns generations.
        try:
            gen = self.c.checkpoint()
        except cqrps.Unsupported as e:
            self.assertEqual(e.code, -15)
            self.assertTrue(e.message)
        else:
            self.assertGreater(gen, 0)
        try:
            cps = self.c.list_checkpoints()
        except cqrps.Unsupported:
            pass
        else:
            self.assertIsInstance(cps, list)

    def test_compact(self) -> None:
        # Compaction works without --data-dir (it is not a checkpoint).
        self.table("py.cmp", kind="cqr", chunks=2, rows=256)
        ids = np.arange(1000, 3000, dtype=np.uint64)
        rng = np.random.default_rng(3)
        self.c.push("py.cmp", ids,
                    rng.standard_normal((len(ids), DIM)).astype(np.float32))
        before = self.c.lookup("py.cmp", ids)
        digest = self.c.digest("py.cmp")
        known = self.c.describe_table("py.cmp").known_ids
        r = self.c.compact("py.cmp")
        self.assertEqual(set(r), {"moved_ids", "known_ids", "static_ids",
                                  "index_bytes", "seconds"})
        self.assertEqual(r["moved_ids"], known)
        self.assertEqual(r["static_ids"], known)
        self.assertGreaterEqual(r["seconds"], 0.0)
        info = self.c.describe_table("py.cmp")
        self.assertTrue(info.compacted)
        self.assertFalse(info.compacting)
        self.assertEqual(info.static_ids, known)
        np.testing.assert_array_equal(self.c.lookup("py.cmp", ids), before)
        self.assertEqual(self.c.digest("py.cmp"), digest)
        # Refusals: another kind, an unknown table; the option at create.
        self.table("py.cmpf")
        with self.assertRaises(cqrps.Unsupported) as cm:
            self.c.compact("py.cmpf")
        self.assertIn("only cqr", cm.exception.message)
        with self.assertRaises(cqrps.NotFound):
            self.c.compact("py.cmp.missing")
        with self.assertRaises(cqrps.InvalidArgument):
            self.table("py.cmpx", compact=True)
        t = self.table("py.cmpo", kind="cqr", compact=True)
        self.assertTrue(t.config.compact)
        self.assertFalse(t.compacted)

    # ---- threads ----

    def test_one_thread_at_a_time(self) -> None:
        # A client busy in one thread refuses a second thread's call
        # instead of corrupting the connection (simulated by holding the
        # guard), and works again afterwards.
        self.c._busy.acquire()
        try:
            errs = []
            th = threading.Thread(target=lambda: self._try_list(errs))
            th.start()
            th.join(10)
            self.assertEqual(len(errs), 1)
            self.assertIsInstance(errs[0], RuntimeError)
        finally:
            self.c._busy.release()
        self.c.list_tables()
        # One client per thread: real concurrency works.
        results = []

        def worker(k: int) -> None:
            with cqrps.connect(self.server.addr) as c:
                results.append(c.lookup("py.thr", np.arange(k, k + 10)).shape)

        self.table("py.thr")
        ths = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(20)
        self.assertEqual(results, [(10, DIM)] * 4)

    def _try_list(self, errs: list) -> None:
        try:
            self.c.list_tables()
        except Exception as e:  # the error itself is the result
            errs.append(e)


class ErrorTest(unittest.TestCase):
    """The exception table against the library's own names."""

    def test_codes_and_names(self) -> None:
        L = _lib.lib()
        for _, num, wire in _lib.ERRORS:
            code = -num
            cls = cqrps.errors.BY_CODE[code]
            self.assertEqual(L.cqrps_errname(code).decode(), wire)
            self.assertEqual((cls.code, cls.name), (code, wire))
            e = cqrps.from_code(code, "why")
            self.assertIsInstance(e, cls)
            self.assertIsInstance(e, cqrps.Error)
            self.assertEqual((e.code, e.name, e.message), (code, wire, "why"))
            self.assertEqual(str(e), f"why [{wire}]")
            self.assertEqual(cqrps.strerror(code),
                             L.cqrps_strerror(code).decode())
        unknown = cqrps.from_code(-999, "x")
        self.assertIs(type(unknown), cqrps.Error)
        self.assertEqual(unknown.code, -999)
        self.assertTrue(issubclass(cqrps.TimedOut, TimeoutError))
        self.assertTrue(issubclass(cqrps.InvalidArgument, ValueError))

    def test_enum_names(self) -> None:
        L = _lib.lib()
        for fn, names in (("cqrps_kind_name", _lib.KIND_NAMES),
                          ("cqrps_optimizer_name", _lib.OPTIMIZER_NAMES),
                          ("cqrps_pooling_name", _lib.POOLING_NAMES),
                          ("cqrps_phase_state_name", _lib.PHASE_STATE_NAMES)):
            f = getattr(L, fn)
            f.restype = _lib.c_char_p
            f.argtypes = [_lib.c_int]
            self.assertEqual(tuple(f(i).decode() for i in range(len(names))),
                             names)

    def test_shard_of(self) -> None:
        self.assertEqual(cqrps.shard_of(12345, 1), 0)
        got = {cqrps.shard_of(i, 4) for i in range(200)}
        self.assertEqual(got, {0, 1, 2, 3})
        self.assertEqual(cqrps.shard_of(-1, 7), cqrps.shard_of(2**64 - 1, 7))


class TimeoutTest(unittest.TestCase):
    """A server that stops answering fails the call with TimedOut; the
    next call reconnects once it answers again."""

    def test_request_timeout(self) -> None:
        with Server() as srv:
            c = cqrps.connect(srv.addr, request_timeout=0.3)
            try:
                c.create_table("py.to", kind="full", dim=4)
                srv.pause()
                try:
                    t0 = time.monotonic()
                    with self.assertRaises(cqrps.TimedOut) as cm:
                        c.lookup("py.to", [1])
                    self.assertLess(time.monotonic() - t0, 10)
                    self.assertEqual(cm.exception.code, -16)
                finally:
                    srv.resume()
                self.assertEqual(c.lookup("py.to", [1]).shape, (1, 4))
            finally:
                c.close()


class ShardTest(unittest.TestCase):
    """Two servers as one sharded deployment."""

    def test_two_shards(self) -> None:
        with Server() as a, Server() as b:
            with cqrps.connect(f"{a.addr},{b.addr}") as c:
                self.assertEqual(c.shard_count, 2)
                c.create_table("py.sh", kind="full", dim=4, optimizer="sgd",
                               lr=1.0)
                ids = np.arange(1000, dtype=np.uint64)
                v = c.lookup("py.sh", ids)
                c.push("py.sh", ids, np.ones((1000, 4), np.float32))
                np.testing.assert_allclose(c.lookup("py.sh", ids), v - 1,
                                           atol=1e-6)
                self.assertEqual(c.describe_table("py.sh").known_ids, 1000)
                # Each shard holds its part, as shard_of says.
                with cqrps.connect(a.addr) as ca:
                    self.assertEqual(
                        ca.describe_table("py.sh").known_ids,
                        sum(cqrps.shard_of(i, 2) == 0 for i in range(1000)))
                self.assertRegex(c.digest("py.sh"), r"^[0-9a-f]{16}$")
                c.drop_table("py.sh")


class AuthTest(unittest.TestCase):
    """Tokens from arguments, files and the environment against a server
    that requires them; the admin token gates drop."""

    def test_tokens(self) -> None:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            tok = os.path.join(d, "token")
            adm = os.path.join(d, "admin")
            for path, secret in ((tok, "py-data-token-0123456789"),
                                 (adm, "py-admin-token-0123456789")):
                with open(path, "w") as f:
                    f.write(secret + "\n")
                os.chmod(path, 0o600)
            env = {k: os.environ.pop(k, None)
                   for k in ("CQRPS_TOKEN", "CQRPS_ADMIN_TOKEN")}
            try:
                with Server(["--auth-token-file", tok,
                             "--admin-token-file", adm]) as srv:
                    with self.assertRaises(cqrps.Unauthenticated):
                        cqrps.connect(srv.addr)
                    with cqrps.connect(srv.addr, token_file=tok) as c:
                        self.assertFalse(c.server_info().admin)
                        c.create_table("py.auth", kind="hash", dim=4,
                                       rows=8)
                        with self.assertRaises(cqrps.PermissionDenied):
                            c.drop_table("py.auth")
                    os.environ["CQRPS_TOKEN"] = "py-data-token-0123456789"
                    os.environ["CQRPS_ADMIN_TOKEN"] = \
                        "py-admin-token-0123456789"
                    with cqrps.connect(srv.addr) as c:
                        self.assertTrue(c.server_info().admin)
                        c.drop_table("py.auth")
                    with self.assertRaises(cqrps.InvalidArgument):
                        cqrps.connect(srv.addr, token="x", token_file=tok)
                    self.assertEqual(cqrps.read_token_file(tok),
                                     b"py-data-token-0123456789")
                    self.assertNotIn("py-data-token", srv.log())
                    self.assertNotIn("py-admin-token", srv.log())
            finally:
                for k, v in env.items():
                    os.environ.pop(k, None)
                    if v is not None:
                        os.environ[k] = v


class LibraryTest(unittest.TestCase):
    """The package finds libcqrps through $CQRPS_LIBRARY."""

    def test_env(self) -> None:
        env = os.environ.get("CQRPS_LIBRARY")
        if not env:
            self.skipTest("CQRPS_LIBRARY not set (run through ctest)")
        self.assertEqual(os.path.realpath(cqrps.library_path()),
                         os.path.realpath(env))

    def _probe(self, value: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, CQRPS_LIBRARY=value)
        code = "import cqrps; print(cqrps.library_path())"
        return subprocess.run([sys.executable, "-c", code], env=env,
                              capture_output=True, text=True, timeout=60)

    def test_env_directory_and_bad_path(self) -> None:
        env = os.environ.get("CQRPS_LIBRARY")
        if not env:
            self.skipTest("CQRPS_LIBRARY not set (run through ctest)")
        r = self._probe(os.path.dirname(env))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(re.search(r"libcqrps\.so", r.stdout))
        r = self._probe("/nonexistent/libcqrps.so")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ImportError", r.stderr)
        self.assertIn("/nonexistent/libcqrps.so", r.stderr)


if __name__ == "__main__":
    unittest.main()
