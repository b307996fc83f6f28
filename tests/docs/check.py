"""The docs, tested: runs the shell examples of README.md and docs/*.md that
are marked to run, in order, in one bash per file (variables carry over),
against a service this starts, and checks the output shown after them.

In a Markdown file:

    <!-- docs-test: run -->
    ```sh
    …commands…
    ```

    <!-- docs-test: output -->
    ```text
    …what the commands before print…
    ```

An output block passes when each of its lines, split at "…", appears in the
output of the run block before it, fragment after fragment, in order (so a
doc can elide what varies). A block marked `<!-- docs-test: run-any -->`
runs the same, but its commands may fail (a `diff` that finds differences,
a call that shows an error): only its output is checked.

Each file runs in a scratch directory of its own (with the repository's
`rules/`, `scripts/`, `clients/` and `examples/` linked in, so commands
written to run from the repository root do) against a fresh service: by
default one this starts (embedded store); with `<!-- docs-test: services -->`
anywhere in the file, the ones the file starts itself (`… serve … &`, a
`redis-server --port 6390 …`), each waited for before the next command.
`127.0.0.1:50051` becomes the service's free port (`LEADSCORE_ADDR` and
`LEADSCORE_GRPC_ADDR` name it to the CLI and to `serve`), `127.0.0.1:9090`
its metrics port (`LEADSCORE_METRICS_ADDR`), Redis port `6390`
another free port, `cargo run --release --` and `leadscore` the binary
under test, and `npx buf` the buf that scripts/client-check.sh installed
(when it did). Everything started is stopped when the file ends.

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

MARK = re.compile(r"^<!-- docs-test: (run|run-any|output) -->\s*$")
SERVICES = "<!-- docs-test: services -->"
DOC_REDIS_PORT = "6390"
LINKED = ["rules", "scripts", "clients", "examples"]
REPO = pathlib.Path(__file__).resolve().parents[2]
# buf as scripts/client-check.sh installs it (CI runs that first); else npx fetches it.
BUF = REPO / "target" / "clients-node" / "node_modules" / ".bin" / "buf"


def blocks(path):
    lines = path.read_text().split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = MARK.match(lines[i])
        if m:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            k = j + 1
            while k < len(lines) and not lines[k].startswith("```"):
                k += 1
            out.append((m.group(1), i + 1, "\n".join(lines[j + 1 : k])))
            i = k
        i += 1
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def matches(expected, actual):
    at = 0
    for line in expected.split("\n"):
        for fragment in (f.strip() for f in line.split("…")):
            if not fragment:
                continue
            found = actual.find(fragment, at)
            if found < 0:
                return fragment
            at = found + len(fragment)
    return None


def read_until(bash, token, seconds):
    """The output up to the line `token <status>`; status 1 on a time-out."""
    import selectors

    fd = bash.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.time() + seconds
    data = b""
    marker = token.encode()
    while time.time() < deadline:
        at = data.find(marker)
        if at >= 0:
            rest = data[at + len(marker):].split(b"\n", 1)[0]
            if b"\n" in data[at:]:
                return data[:at].decode(errors="replace"), int(rest.strip() or 1)
        if not sel.select(timeout=max(0.0, deadline - time.time())):
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            return data.decode(errors="replace"), 1
        data += chunk
    return data.decode(errors="replace") + f"\n(timed out after {seconds} s)", 1


def wait_for_services(text, binary):
    """The block with a wait after each line that starts a service in the
    background, as a reader would wait before going on."""
    out = []
    for line in text.split("\n"):
        out.append(line)
        stripped = line.split("#")[0].rstrip()
        if re.search(r"\bserve\b.*&$", stripped):
            out.append(f"for _ in $(seq 300); do {binary} health >/dev/null 2>&1 && break; sleep 0.1; done")
        elif re.search(r"\bredis-server\b.*--daemonize yes", stripped):
            port = re.search(r"--port (\d+)", stripped).group(1)
            out.append(f"for _ in $(seq 100); do redis-cli -p {port} ping >/dev/null 2>&1 && break; sleep 0.1; done")
    return "\n".join(out)


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
    found = blocks(path)
    if not found:
        return 0
    own_services = SERVICES in path.read_text()
    port, redis_port, metrics_port = free_port(), free_port(), free_port()
    work = pathlib.Path(tempfile.mkdtemp())
    for name in LINKED:
        (work / name).symlink_to(REPO / name)
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    (bin_dir / "leadscore").symlink_to(binary)
    log = open(work / "serve.log", "w")
    service = None
    if not own_services:
        shutil.copy(REPO / "rules" / "default.toml", work / "my-rules.toml")
        service = subprocess.Popen(
            [binary, "serve", "--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", f"127.0.0.1:{metrics_port}"],
            cwd=work,
            stderr=log,
            env=dict(os.environ, RUST_LOG="warn", NO_COLOR="1"),
        )
    failures = 0
    bash = None
    try:
        if service:
            wait_for_port(port, path)
        env = dict(
            os.environ,
            NO_COLOR="1",
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
        bash.stdin.write("set -o pipefail\nshopt -s expand_aliases\ntrap 'failed=1' ERR\n")
        last = None
        for n, (kind, line, text) in enumerate(found):
            text = (
                text.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
                .replace("127.0.0.1:9090", f"127.0.0.1:{metrics_port}")
                .replace("cargo run --release --", binary)
                .replace(DOC_REDIS_PORT, str(redis_port))
            )
            if BUF.exists():
                text = text.replace("npx buf ", f"{BUF} ")
            if kind in ("run", "run-any"):
                text = wait_for_services(text, binary)
                token = f"@@docs-test-{n}@@"
                status_of = "$failed" if kind == "run" else "0"
                bash.stdin.write(f"failed=0\n{text}\necho; echo \"{token} {status_of}\"\n")
                bash.stdin.flush()
                output, status = read_until(bash, token, 180)
                if status != 0:
                    print(f"{path}:{line}: failed:\n{output[-3000:]}")
                    failures += 1
                    break
                last = (line, output)
            else:
                if last is None:
                    print(f"{path}:{line}: an output block with no run block before it")
                    failures += 1
                    continue
                missing = matches(text, last[1])
                if missing:
                    print(f"{path}:{line}: the output of line {last[0]} no longer shows {missing!r}:\n{last[1][-3000:]}")
                    failures += 1
        print(f"{path}: {len(found)} blocks checked, {failures} failed")
    finally:
        if bash:
            bash.stdin.close()
            try:
                os.killpg(bash.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            bash.wait(timeout=10)
        subprocess.run(["redis-cli", "-p", str(redis_port), "shutdown", "nosave"], capture_output=True)
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
