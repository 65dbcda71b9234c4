"""Escape attempts through the network: host loopback services, host sockets, the outside world, raw access.

No test here sends a packet off this host. The only non-loopback targets are the two documented
probes (1.1.1.1:80, 8.8.8.8:53), and they are tried only after the sandbox has shown it has no
interface but loopback and no route, so the kernel refuses them before anything is sent.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from corral.sandbox import NetworkProfile
from tests.security.sandbox.attacks import run_attack
from tests.security.sandbox.conftest import ListeningSocket, SandboxFactory

# Real escape attempts in real sandboxes: the full suite (and CI) runs them, the fast lane does not.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.slow]

# Run first by every probe: if the sandbox has any interface but lo, or any route, stop before sending.
NO_EGRESS_GUARD = """
def interfaces():
    return sorted(name for _, name in socket.if_nameindex())
def routes():
    found = []
    for path in ("/proc/net/route", "/proc/net/ipv6_route"):
        try:
            lines = read(path).decode().splitlines()
        except OSError:
            continue
        if path.endswith("/route"):  # IPv4: a header, then the interface in the first column
            found += [row for row in lines[1:] if row.split() and row.split()[0] != "lo"]
        else:  # IPv6: no header, the interface in the last column
            found += [row for row in lines if row.split() and row.split()[-1] != "lo"]
    return found
RESULTS["interfaces"] = {"ok": True, "value": interfaces()}
RESULTS["routes"] = {"ok": True, "value": routes()}
SAFE = RESULTS["interfaces"]["value"] in ([], ["lo"]) and not RESULTS["routes"]["value"]
"""


def assert_no_egress_path(attack) -> None:
    interfaces, routes = attack["interfaces"].value, attack["routes"].value
    assert interfaces in ([], ["lo"]) and not routes, (
        f"ESCAPE: the sandbox has host network access (interfaces {interfaces}, routes {routes[:3]}); "
        "external probes were not sent"
    )


async def test_cannot_connect_to_a_host_loopback_tcp_service(
    make_sandbox: SandboxFactory, host_tcp_server: ListeningSocket
) -> None:
    sandbox = await make_sandbox()
    port = host_tcp_server.address[1]
    attack = await run_attack(
        sandbox,
        """
        def connect(host):
            with socket.create_connection((host, P["port"]), timeout=1) as conn:
                conn.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                return "connected"
        attempt("127.0.0.1", connect, "127.0.0.1")
        attempt("localhost", connect, "localhost")
        attempt("127.0.0.2 (loopback /8)", connect, "127.0.0.2")
        """,
        {"port": port},
    )
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
    assert not succeeded, f"ESCAPE: reached the host's 127.0.0.1:{port} from the sandbox: {succeeded}"
    received = host_tcp_server.connections_received()
    assert received == 0, f"ESCAPE: the host loopback service received {received} connection(s) from the sandbox"


async def test_cannot_see_host_sockets_in_proc_net(
    make_sandbox: SandboxFactory, host_tcp_server: ListeningSocket, host_unix_server: ListeningSocket
) -> None:
    sandbox = await make_sandbox()
    port_hex = f":{host_tcp_server.address[1]:04X}"
    attack = await run_attack(
        sandbox,
        """
        attempt("tcp table", read, "/proc/net/tcp", 1 << 20)
        attempt("unix table", read, "/proc/net/unix", 1 << 20)
        """,
    )
    tcp = attack["tcp table"]
    assert not (tcp.ok and port_hex in tcp.value), f"ESCAPE: the host's listening port {port_hex} is visible inside"
    unix = attack["unix table"]
    path = host_unix_server.address
    assert not (unix.ok and path in unix.value), f"ESCAPE: the host's unix socket {path} is listed inside"


async def test_cannot_connect_to_a_host_unix_socket(
    make_sandbox: SandboxFactory, host_unix_server: ListeningSocket
) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        def connect(path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(path)
                sock.sendall(b"hello")
                return "connected"
        attempt("by path", connect, P["path"])
        attempt("via /proc/1/root", connect, "/proc/1/root" + P["path"])
        attempt("search for sockets", lambda: [p for p in hunt(["corral.sock"]) if not p.startswith("/proc")])
        """,
        {"path": host_unix_server.address},
    )
    for label in ("by path", "via /proc/1/root"):
        assert not attack[label].ok, f"ESCAPE: connected to the host's unix socket {label}: {attack[label]}"
    found = attack["search for sockets"]
    assert not (found.ok and found.value), f"ESCAPE: the host's socket file is reachable inside: {found}"
    received = host_unix_server.connections_received()
    assert received == 0, f"ESCAPE: the host unix socket received {received} connection(s) from the sandbox"


async def test_cannot_connect_to_a_host_abstract_unix_socket(
    make_sandbox: SandboxFactory, host_abstract_server: ListeningSocket
) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        def connect():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect("\\0" + P["name"])
                return "connected"
        def listed():
            lines = [line for line in read("/proc/net/unix", 1 << 20).decode().splitlines() if P["name"] in line]
            if not lines:
                raise OSError(2, "not listed")
            return lines
        attempt("abstract", connect)
        attempt("listed in /proc/net/unix", listed)
        """,
        {"name": host_abstract_server.address[1:]},
    )
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
    assert not succeeded, f"ESCAPE: the host's abstract unix socket is reachable inside: {succeeded}"
    assert host_abstract_server.connections_received() == 0, "ESCAPE: the host abstract socket got a connection"


async def test_cannot_reach_external_addresses(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        def tcp(host, port):
            started = time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=2):
                    return "connected"
            finally:
                RESULTS.setdefault("seconds", {"ok": True, "value": {}})["value"][f"{host}:{port}"] = (
                    time.monotonic() - started)
        def udp(host, port):
            started = time.monotonic()
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(2)
                    sock.connect((host, port))
                    sock.send(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01")
                    return sock.recv(512)
            finally:
                RESULTS.setdefault("seconds", {"ok": True, "value": {}})["value"][f"udp {host}:{port}"] = (
                    time.monotonic() - started)
        if SAFE:
            attempt("tcp 1.1.1.1:80", tcp, "1.1.1.1", 80)
            attempt("tcp 8.8.8.8:53", tcp, "8.8.8.8", 53)
            attempt("udp 8.8.8.8:53", udp, "8.8.8.8", 53)
        """,
        prelude=NO_EGRESS_GUARD,
        timeout=10,
    )
    assert_no_egress_path(attack)
    for label in ("tcp 1.1.1.1:80", "tcp 8.8.8.8:53", "udp 8.8.8.8:53"):
        assert not attack[label].ok, f"ESCAPE: {label} was reachable from the sandbox: {attack[label]}"
        assert attack[label].errno in ("ENETUNREACH", "EHOSTUNREACH", "EPERM", "EACCES"), (
            f"{label} did not fail as unreachable (so packets may have been sent): {attack[label]}"
        )
    slow = {probe: s for probe, s in attack["seconds"].value.items() if s > 0.5}
    assert not slow, f"external probes did not fail immediately (a packet may have left): {slow}"


async def test_cannot_resolve_dns(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        def resolve(name):
            started = time.monotonic()
            try:
                return socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)
            finally:
                RESULTS.setdefault("seconds", {"ok": True, "value": {}})["value"][name] = time.monotonic() - started
        if SAFE:
            attempt("example.com", resolve, "example.com")
            attempt("pypi.org", resolve, "pypi.org")
        """,
        prelude=NO_EGRESS_GUARD,
        timeout=10,
        env={"RES_OPTIONS": "timeout:1 attempts:1"},
    )
    assert_no_egress_path(attack)
    for name in ("example.com", "pypi.org"):
        assert not attack[name].ok, f"ESCAPE: DNS resolved {name} inside the sandbox: {attack[name]}"
    slow = {name: s for name, s in attack["seconds"].value.items() if s > 2}
    assert not slow, f"DNS resolution did not fail fast: {slow}"


async def test_cannot_open_raw_or_packet_sockets(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        ETH_P_ALL = 0x0003
        attempt("AF_PACKET raw", socket.socket, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        attempt("AF_PACKET dgram", socket.socket, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        attempt("AF_INET raw icmp", socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        attempt("AF_INET raw IPPROTO_RAW", socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        attempt("AF_INET6 raw", socket.socket, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        """,
    )
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
    assert not succeeded, f"ESCAPE: raw network access inside the sandbox: {succeeded}"


def host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10, check=True).stdout


async def test_cannot_change_host_network_interfaces(make_sandbox: SandboxFactory, token: str) -> None:
    name = "ce" + token[-8:]
    before = host_links()
    sandbox = await make_sandbox()
    try:
        # Only the dummy link and a no-op MTU change: were this run unisolated, nothing else on the host moves.
        result = await sandbox.exec(
            f"ip link add {name} type dummy; echo add=$?; ip link set {name} up; echo up=$?; "
            f"ip addr add 192.0.2.1/32 dev {name}; echo addr=$?; "
            f"ip link set lo mtu $(cat /sys/class/net/lo/mtu 2>/dev/null || echo 65536); echo mtu=$?",
            timeout=10,
        )
        for step in ("add", "up", "addr", "mtu"):
            assert f"{step}=0" not in result.stdout, f"ESCAPE: `ip` {step} succeeded inside the sandbox: {result}"
        after = host_links()
        assert name not in after, f"ESCAPE: interface {name} created by the sandbox appeared on the host"
        assert [line for line in after.splitlines() if " lo:" in line] == [
            line for line in before.splitlines() if " lo:" in line
        ], "ESCAPE: the host's loopback interface changed"
    finally:
        if name in host_links():
            subprocess.run(["ip", "link", "del", name], check=False, timeout=10)


async def test_sandbox_sees_no_host_network_interfaces(make_sandbox: SandboxFactory) -> None:
    host = sorted(name for _, name in socket.if_nameindex())
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        attempt("if_nameindex", lambda: sorted(name for _, name in socket.if_nameindex()))
        attempt("/sys/class/net", lambda: sorted(os.listdir("/sys/class/net")))
        attempt("/proc/net/dev", lambda: sorted(l.split(":")[0].strip() for l in read("/proc/net/dev").decode()
                                                .splitlines()[2:]))
        """,
    )
    host_only = set(host) - {"lo"}
    for label, outcome in attack.outcomes.items():
        seen = set(outcome.value) if outcome.ok else set()
        assert not (seen & host_only), f"ESCAPE: host interfaces {sorted(seen & host_only)} visible via {label}"


async def test_egress_proxy_refuses_host_loopback_targets(
    make_sandbox: SandboxFactory, host_tcp_server: ListeningSocket
) -> None:
    # Allowlist mode: the sandbox reaches the world only through the host's egress proxy. That proxy
    # runs on the host, so a request for a loopback address would reach the host's own services.
    port = host_tcp_server.address[1]
    sandbox = await make_sandbox(network=NetworkProfile(mode="allowlist", allow=("example.com",)))
    attack = await run_attack(
        sandbox,
        """
        from urllib.parse import urlsplit
        proxy = urlsplit(os.environ.get("HTTPS_PROXY") or os.environ.get("HTTP_PROXY") or "http://127.0.0.1:1")
        RESULTS["proxy"] = {"ok": True, "value": f"{proxy.hostname}:{proxy.port}"}
        def ask(request):
            with socket.create_connection((proxy.hostname, proxy.port), timeout=2) as conn:
                conn.settimeout(2)
                conn.sendall(request.encode())
                status = conn.recv(4096).decode(errors="replace").split("\\r\\n", 1)[0]
            code = status.split()[1] if len(status.split()) > 1 else ""
            if not code.startswith("2"):
                raise OSError(1, "refused: " + status)
            return status
        port = P["port"]
        for target in ("127.0.0.1", "localhost", "127.1", "2130706433", "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]",
                       "localhost.", "LOCALHOST"):
            head = f" HTTP/1.1\\r\\nHost: {target}:{port}\\r\\n\\r\\n"
            attempt("CONNECT " + target, ask, f"CONNECT {target}:{port}" + head)
            attempt("GET " + target, ask, f"GET http://{target}:{port}/" + head)
        """,
        {"port": port},
        timeout=20,
    )
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items() if label != "proxy"}
    assert not succeeded, f"ESCAPE: the egress proxy tunnelled to the host's loopback service: {succeeded}"
    received = host_tcp_server.connections_received()
    assert received == 0, f"ESCAPE: the host loopback service received {received} connection(s) through the proxy"
