"""The docs, tested: runs the shell examples of README.md and docs/*.md in
order, in one bash per file (variables carry over), against a service this
starts, and checks the output shown after them.

Every shell block (```sh, bash, shell, console) carries a mark on the line
before it, or the check fails:

    <!-- docs-test: run -->              runs; a failing command fails the check
    <!-- docs-test: run-any -->          runs; its commands may fail (a `diff`
                                         that finds differences, a call that
                                         shows an error): only its output counts
    <!-- docs-test: skip: <why> -->      not run, for the reason given
    <!-- docs-test: output -->           (on a text block) what the run block
                                         before it must still print

An output block passes when each of its lines, split at "…", appears in the
output of the run block before it (commands and whatever the services it
started in the background printed meanwhile), fragment after fragment, in
order, so a doc can elide what varies. A line's first fragment starts at a
word's start (unless the line starts with "…"): a shown `SERVING` is not
found in `NOT_SERVING`; a doc may still wrap a long output line.

Each file runs in a scratch directory of its own (with the repository's
`rules/`, `scripts/`, `clients/` and `examples/` linked in, so commands
written to run from the repository root do) against a fresh service: by
default one this starts (embedded store); with `<!-- docs-test: services -->`
anywhere in the file, the ones the file starts itself (`… serve … &`, a
`redis-server … --daemonize yes`), each waited for before the next command.
The ports the docs name (DOC_PORTS: 50051 the service, 9090 its metrics,
50052 a second service, 6390 a Redis, 7000-7002 a Redis Cluster, 8000 a
webhook receiver) become free ports (`LEADSCORE_ADDR` and
`LEADSCORE_GRPC_ADDR` name the first to the CLI and to `serve`),
`cargo run --release --` and `leadscore` the binary under test, and
`npx buf` the buf scripts/node-tools.sh installed. Everything started is
stopped when the file ends.

    python3 tests/docs/check.py target/debug/leadscore README.md docs/*.md
"""

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MARK = re.compile(r"^<!-- docs-test: (run|run-any|output|skip: .+?) -->\s*$")
SHELL = re.compile(r"^```(sh|bash|shell|console)\s*$")
SERVICES = "<!-- docs-test: services -->"
# The ports the docs name (the service's gRPC and metrics ports, a second
# service, the doc's own Redis and Redis Cluster, a webhook receiver): each
# becomes a free port of the run.
DOC_PORTS = ["50051", "50052", "9090", "6390", "7000", "7001", "7002", "8000"]
LINKED = ["rules", "scripts", "clients", "examples"]
REPO = pathlib.Path(__file__).resolve().parents[2]
# buf as scripts/node-tools.sh installs it (scripts/docs-check.sh runs it first).
BUF = REPO / "target" / "clients-node" / "node_modules" / ".bin" / "buf"


def blocks(path):
    """The marked blocks as (kind, line, text), and the line numbers of the
    shell blocks that carry no mark (every one must run or say why not)."""
    lines = path.read_text().split("\n")
    out = []
    unmarked = []
    i = 0
    while i < len(lines):
        if SHELL.match(lines[i]):
            unmarked.append(i + 1)
        m = MARK.match(lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            k = j + 1
            while k < len(lines) and not lines[k].startswith("```"):
                k += 1
            kind = "skip" if m.group(1).startswith("skip:") else m.group(1)
            out.append((kind, i + 1, "\n".join(lines[j + 1 : k])))
            i = k
        i += 1
    return out, unmarked


def free_port(taken=()):
    """A port free now with port + 10000 free too (a Redis Cluster node's bus
    port), both below Linux's ephemeral range (32768 on) so no outgoing
    connection takes one meanwhile, clear of the doc's own ports (all
    outside 20000-22767) and of the ports and bus ports handed out before."""
    import random

    while True:
        port = random.randrange(20000, 22768)
        if {port, port + 10000, port - 10000} & set(taken):
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def in_word(char):
    return char.isalnum() or char == "_"


def matches(expected, actual):
    """None when `actual` shows every line of `expected`, else the first
    fragment it does not show."""
    at = 0
    for line in expected.split("\n"):
        anchored = not line.lstrip().startswith("…")
        for fragment in (f.strip() for f in line.split("…")):
            if not fragment:
                continue
            found = actual.find(fragment, at)
            while anchored and found > 0 and in_word(fragment[0]) and in_word(actual[found - 1]):
                found = actual.find(fragment, found + 1)
            if found < 0:
                return fragment
            at = found + len(fragment)
            anchored = False
    return None


class Output:
    """What the file's bash prints, read block by block: what arrives after
    a block's end line (a background service's late output) opens the next
    block's."""

    def __init__(self, bash):
        import selectors

        self.fd = bash.stdout.fileno()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)
        self.data = b""

    def until(self, token, seconds):
        """The output up to the line `token <status>`; status 1 on a time-out."""
        deadline = time.time() + seconds
        marker = token.encode()
        while time.time() < deadline:
            at = self.data.find(marker)
            end = self.data.find(b"\n", at) if at >= 0 else -1
            if end >= 0:
                status = self.data[at + len(marker) : end].strip()
                output, self.data = self.data[:at], self.data[end + 1 :]
                return output.decode(errors="replace"), int(status or 1)
            if not self.sel.select(timeout=max(0.0, deadline - time.time())):
                break
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return self.data.decode(errors="replace"), 1
            self.data += chunk
        return self.data.decode(errors="replace") + f"\n(timed out after {seconds} s)", 1


def wait_for_services(text, binary):
    """The block with a wait after each line that starts a service in the
    background, as a reader would wait before going on."""
    out = []
    for line in text.split("\n"):
        out.append(line)
        stripped = line.split("#")[0].rstrip()
        if re.search(r"\bserve\b.*&$", stripped):
            addr = re.search(r"--grpc-addr[ =](\S+)", stripped)
            target = f" --addr http://{addr.group(1)}" if addr else ""
            out.append(f"for _ in $(seq 300); do {binary} health{target} >/dev/null 2>&1 && break; sleep 0.1; done")
        elif re.search(r"\bredis-server\b.*--daemonize yes", stripped):
            port = re.search(r"--port (\d+)", stripped)
            if port:  # (a port in a variable: the doc waits itself)
                out.append(f"for _ in $(seq 100); do redis-cli -p {port.group(1)} ping >/dev/null 2>&1 && break; sleep 0.1; done")
    return "\n".join(out)


def substitute(text, ports, binary):
    """The doc's ports, binary and buf as this run has them."""
    for doc_port, port in ports.items():
        text = re.sub(rf"(?<![\d.]){doc_port}(?!\d|\.\d)", str(port), text)
    text = text.replace("cargo run --release --", binary)
    if BUF.exists():
        text = text.replace("npx buf ", f"{BUF} ")
    return text


def wait_for_port(port, path):
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"{path}: the service did not start")
            time.sleep(0.1)


def check(binary, path):
    found, unmarked = blocks(path)
    failures = 0
    for line in unmarked:
        print(f"{path}:{line}: a shell example with no docs-test mark: mark it run, run-any or skip: <why>")
        failures += 1
    skipped = [line for kind, line, _ in found if kind == "skip"]
    found = [block for block in found if block[0] != "skip"]
    if not found:
        if skipped:
            print(f"{path}: {len(skipped)} examples skipped, none to run")
        return failures
    own_services = SERVICES in path.read_text()
    ports = {}
    for doc_port in DOC_PORTS:
        ports[doc_port] = free_port(set(ports.values()))
    port, metrics_port = ports["50051"], ports["9090"]
    work = pathlib.Path(tempfile.mkdtemp())
    for name in LINKED:
        (work / name).symlink_to(REPO / name)
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    (bin_dir / "leadscore").symlink_to(binary)
    log = open(work / "serve.log", "w")
    service = None
    if not own_services:
        service = subprocess.Popen(
            [binary, "serve", "--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", f"127.0.0.1:{metrics_port}"],
            cwd=work,
            stderr=log,
            env=dict(os.environ, RUST_LOG="warn"),
        )
    bash = None
    started = time.time()
    try:
        if service:
            wait_for_port(port, path)
        env = dict(
            os.environ,
            RUST_LOG="warn",
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            LEADSCORE_ADDR=f"http://127.0.0.1:{port}",
            LEADSCORE_GRPC_ADDR=f"127.0.0.1:{port}",
            LEADSCORE_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
        )
        bash = subprocess.Popen(
            ["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=work, text=True, env=env, start_new_session=True,
        )
        bash.stdin.write("set -o pipefail -o errtrace\nshopt -s expand_aliases\ntrap 'failed=1' ERR\n")
        output_of = Output(bash)
        last = None
        ran = checked = 0
        for n, (kind, line, text) in enumerate(found):
            text = substitute(text, ports, binary)
            if kind in ("run", "run-any"):
                text = wait_for_services(text, binary)
                token = f"@@docs-test-{n}@@"
                status_of = "$failed" if kind == "run" else "0"
                bash.stdin.write(f"failed=0\n{text}\necho; echo \"{token} {status_of}\"\n")
                bash.stdin.flush()
                output, status = output_of.until(token, 180)
                if status != 0:
                    print(f"{path}:{line}: failed:\n{output[-3000:]}")
                    failures += 1
                    break
                last = (line, output)
                ran += 1
            else:
                if last is None:
                    print(f"{path}:{line}: an output block with no run block before it")
                    failures += 1
                    continue
                missing = matches(text, last[1])
                if missing:
                    print(f"{path}:{line}: the output of line {last[0]} no longer shows {missing!r}:\n{last[1][-3000:]}")
                    failures += 1
                checked += 1
        print(
            f"{path}: {ran} examples run, {checked} outputs checked, {len(skipped)} skipped, "
            f"{failures} failed ({time.time() - started:.0f} s)"
        )
    finally:
        if bash:
            bash.stdin.close()
            try:
                os.killpg(bash.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            bash.wait(timeout=10)
        for doc_port in ("6390", "7000", "7001", "7002"):
            subprocess.run(["redis-cli", "-p", str(ports[doc_port]), "shutdown", "nosave"], capture_output=True)
        if service:
            service.terminate()
            service.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return failures


def main():
    binary = str(pathlib.Path(sys.argv[1]).resolve())
    failures = sum(check(binary, pathlib.Path(p)) for p in sys.argv[2:])
    if failures:
        raise SystemExit(f"docs check: {failures} failed")
    print("docs check passed")


if __name__ == "__main__":
    main()
