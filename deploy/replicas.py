"""Several replicas of app.py on loopback behind nginx with sticky sessions: `make replicas` (Ctrl+C stops all). nginx
runs as the user from a configuration written from deploy/nginx.conf.template into a temporary folder (its pid, logs
and temporary files there too), so no root is needed. Options other than these go to every replica's app.py."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("nginx.conf.template")
COOKIE = "explorer_replica"  # the cookie the template sets: the name of the replica a browser is pinned to
STARTUP_SECONDS = 300.0  # the bound of every wait for a process to serve; only a failure reaches it


def nginx_binary() -> str | None:
    """Debian's nginx (in /usr/sbin, which a user's PATH often lacks), or None."""
    found = shutil.which("nginx")
    return found or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def replica_names(addresses: list[str]) -> dict[str, str]:
    """The name each replica has in the cookie (r1, r2, ...): the cookie never carries an address."""
    return {f"r{i}": address for i, address in enumerate(addresses, 1)}


def render_config(listen: str, addresses: list[str], run_dir: Path) -> str:
    """The template filled in: nginx listens on `listen` (port or host:port) and balances over the replicas at
    `addresses` (host:port each), keeping its pid, logs and temporary files in run_dir."""
    names = replica_names(addresses)
    lists = {
        "servers": [f"server {address};" for address in addresses],
        "pins": [f"{name} {address};" for name, address in names.items()],
        "names": [f'"~{re.escape(address)}$" {name};' for name, address in names.items()],
    }
    lines = []
    for line in TEMPLATE.read_text().splitlines():
        field = line.strip()[2:-2] if line.strip().startswith("{{") else None
        if field in lists:
            indent = line[:len(line) - len(line.lstrip())]
            lines += [indent + item for item in lists[field]]
        else:
            lines.append(line.replace("{{listen}}", listen).replace("{{run}}", str(run_dir)))
    return "\n".join(lines) + "\n"


def start_nginx(config: str, run_dir: Path, listen_port: int) -> subprocess.Popen:
    """nginx in the foreground on this configuration, once it accepts connections on listen_port."""
    nginx = nginx_binary()
    if nginx is None:
        raise RuntimeError("nginx is missing: `make replicas` installs Debian's nginx package")
    run_dir.mkdir(parents=True, exist_ok=True)
    # started as root, nginx's workers run as nobody, and must reach the temporary folders nginx creates in here
    run_dir.chmod(0o755)
    conf = run_dir / "nginx.conf"
    conf.write_text(config)
    # -e: the error log from the first moment on (before the configuration is read, nginx would open /var/log)
    proc = subprocess.Popen([nginx, "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "error.log")])
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(run_dir / 'error.log').read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", listen_port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("nginx did not listen in time")


def replica_threads(n_replicas: int) -> int:
    """Each replica's share of the cores: torch's thread team would otherwise claim them all in every replica."""
    return max(1, (os.cpu_count() or 1) // n_replicas)


def start_replica(port: int, app_args: list[str], threads: int, output: IO | None = None) -> subprocess.Popen:
    """One app.py on 127.0.0.1:port with this many torch threads (unless OMP_NUM_THREADS says), its output on this
    terminal or to `output`."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    return subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                             *app_args], cwd=ROOT, env=env, stdout=output, stderr=output)


def wait_serving(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the replica for {url} exited with status {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the replica for {url} did not serve in time")


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--port", type=int, default=8080, help="where nginx listens, on 127.0.0.1")
    ap.add_argument("--first-replica-port", type=int, default=7861, help="replica i listens on this port + i")
    args, app_args = ap.parse_known_args()
    ports = [args.first_replica_port + i for i in range(args.replicas)]
    threads = replica_threads(args.replicas)
    # Ctrl+C reaches every process of the terminal's group (and interrupts this one even when a shell started it in
    # the background, with SIGINT ignored); a plain `kill` of this one stops the others too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)
    procs: list[subprocess.Popen] = []
    try:
        procs += [start_replica(port, app_args, threads) for port in ports]
        for proc, port in zip(procs, ports):
            wait_serving(proc, f"http://127.0.0.1:{port}/")
        run_dir = Path(tempfile.mkdtemp(prefix="explorer-nginx-"))
        config = render_config(f"127.0.0.1:{args.port}", [f"127.0.0.1:{port}" for port in ports], run_dir)
        procs.append(start_nginx(config, run_dir, args.port))
        print(f"\n{args.replicas} replicas behind nginx: http://127.0.0.1:{args.port}/  (nginx's configuration and logs:"
              f" {run_dir}; Ctrl+C stops all)", flush=True)
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        print("a process exited; stopping the others", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
