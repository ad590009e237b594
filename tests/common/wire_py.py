"""The wire protocol from Python, for tests: message classes made from the
schema itself (protoc-c --descriptor_set_out, python3-protobuf) and a
blocking one-request-at-a-time client. No generated code is committed.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import tempfile

from google.protobuf import descriptor_pb2, message_factory


def load_messages(protoc_c: str, proto_file: str) -> dict:
    """{"cqrps.v1.Request": class, ...} from proto_file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cqrps.desc")
        subprocess.run([protoc_c, f"--descriptor_set_out={out}",
                        f"-I{os.path.dirname(proto_file)}", proto_file],
                       check=True, timeout=60)
        with open(out, "rb") as f:
            fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    return message_factory.GetMessages(fds.file)


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def send_msg(sock: socket.socket, msg) -> None:
    body = msg.SerializeToString()
    sock.sendall(struct.pack(">I", len(body)) + body)


def recv_msg(sock: socket.socket, cls):
    (n,) = struct.unpack(">I", read_exact(sock, 4))
    return cls.FromString(read_exact(sock, n))


class WireClient:
    """One connection; call() sends a Request and returns its Response."""

    def __init__(self, msgs: dict, addr: str, timeout: float = 30) -> None:
        self.m = msgs
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout)
        self.next_id = 1
        hello = self.call("hello", protocol_version=1, client_name="test")
        assert hello.status == 0, hello.message

    def call(self, op: str, **fields):
        q = self.m["cqrps.v1.Request"](id=self.next_id)
        self.next_id += 1
        getattr(q, op).SetInParent()
        for k, v in fields.items():
            setattr(getattr(q, op), k, v)
        send_msg(self.sock, q)
        return recv_msg(self.sock, self.m["cqrps.v1.Response"])

    def close(self) -> None:
        self.sock.close()
