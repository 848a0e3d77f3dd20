"""An RFC 3161 timestamp authority on loopback for the anchor tests: a test CA and a TSA
certificate it issued (extendedKeyUsage critical,timeStamping), and a small HTTP server that
answers each POSTed query with `openssl ts -reply`."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OPENSSL = shutil.which("openssl")

TSA_CONFIG = """
[ tsa ]
default_tsa = test_tsa
[ test_tsa ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
certs = $dir/tsa.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256
accuracy = secs:1
ordering = yes
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def openssl(*args: str, cwd: Path, data: bytes | None = None) -> bytes:
    """`openssl *args` in `cwd`; its standard output (it must succeed)."""
    assert OPENSSL is not None
    done = subprocess.run(  # noqa: S603 - the machine's openssl
        [OPENSSL, *args], cwd=cwd, input=data, capture_output=True, check=False, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def make_tsa(d: Path) -> Path:
    """In the new directory `d`: ca.crt/ca.key, tsa.crt/tsa.key, and tsa.cnf for `openssl ts`."""
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    openssl("req", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", "/CN=Test TSA",
            cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=critical,timeStamping\n"
    )
    openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "tsa.crt", "-days", "2", "-extfile", "ext.cnf",
            cwd=d)  # fmt: skip
    (d / "serial").write_text("01\n")
    (d / "tsa.cnf").write_text(TSA_CONFIG.format(dir=d))
    return d


@contextmanager
def tsa_server(tsa_dir: Path, port: int = 0) -> Iterator[str]:
    """The TSA of `tsa_dir` over HTTP on loopback (on `port`, or any free one) until the
    block ends: its URL."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            query = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:  # one reply at a time: they share the serial file
                (tsa_dir / "req.tsq").write_bytes(query)
                openssl("ts", "-reply", "-config", "tsa.cnf", "-queryfile", "req.tsq",
                        "-out", "resp.tsr", cwd=tsa_dir)  # fmt: skip
                reply = (tsa_dir / "resp.tsr").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tsa"
    finally:
        server.shutdown()
        server.server_close()
