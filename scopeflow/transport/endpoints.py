"""Endpoint strings, loopback rules and CURVE security for binding and connecting sockets.

Endpoints are ZeroMQ URLs: ``inproc://name``, ``ipc:///path`` or ``tcp://host:port`` (``port``
may be ``*`` to let the system choose; :func:`bind` returns the actual endpoint). Command
endpoints move real hardware, so :func:`bind` refuses a non-loopback address for them unless CURVE
keys are configured.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from scopeflow.errors import EndpointError

SCHEMES = ("inproc", "ipc", "tcp")
IPC_PATH_MAX = 107  # sockaddr_un.sun_path on Linux, minus the terminator


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint."""

    scheme: str
    address: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"

    @property
    def host(self) -> str | None:
        """The host part of a tcp endpoint."""
        if self.scheme != "tcp":
            return None
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def is_local(self) -> bool:
        """True when only this host can reach it (inproc, ipc, or tcp on a loopback address)."""
        if self.scheme in ("inproc", "ipc"):
            return True
        host = self.host or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def parse_endpoint(text: str) -> Endpoint:
    """Parse and check an endpoint string, raising EndpointError with the fix when it is wrong."""
    scheme, sep, address = text.partition("://")
    if not sep or scheme not in SCHEMES or not address:
        raise EndpointError(
            f"endpoint {text!r} is not of the form inproc://name, ipc:///path or tcp://host:port"
        )
    if scheme == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host or not (port == "*" or (port.isdigit() and 0 < int(port) < 65536)):
            raise EndpointError(f"tcp endpoint {text!r} needs host:port with port 1-65535 or '*'")
    if scheme == "ipc" and len(address) > IPC_PATH_MAX:
        raise EndpointError(
            f"ipc path of {len(address)} chars exceeds {IPC_PATH_MAX}: use a shorter one"
        )
    return Endpoint(scheme, address)


@dataclass(frozen=True)
class CurveServerKeys:
    """CURVE keys of a server: its secret key file and a folder of authorised clients' public keys
    (both in the format of ``zmq.auth.create_certificates``)."""

    secret_file: Path
    authorized_clients_dir: Path


@dataclass(frozen=True)
class CurveClientKeys:
    """CURVE keys of a client: its own secret key file and the server's public key file."""

    secret_file: Path
    server_public_file: Path


def bind(
    sock: zmq.Socket,
    endpoint: str,
    *,
    loopback_only: bool = False,
    curve: CurveServerKeys | None = None,
) -> str:
    """Bind ``sock``; return the endpoint actually bound (resolves ``tcp://host:*``).

    With ``loopback_only`` (command channels) a non-local endpoint is refused unless ``curve``
    keys are given; with keys, the socket becomes a CURVE server and only authorised clients
    (checked by the context's ZAP authenticator, see :func:`start_authenticator`) can connect.
    """
    ep = parse_endpoint(endpoint)
    if loopback_only and not ep.is_local and curve is None:
        raise EndpointError(
            f"refusing to bind command endpoint {endpoint} on a non-loopback address without "
            "CURVE keys; bind to 127.0.0.1 or configure --curve-secret/--curve-clients"
        )
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey = _keypair(curve.secret_file)
        sock.curve_server = True
    if ep.scheme == "ipc":  # the socket file's folder may not exist yet (a fresh run folder)
        try:
            Path(ep.address).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EndpointError(f"cannot create the folder of {endpoint}: {exc.strerror}") from None
    try:
        sock.bind(str(ep))
    except zmq.ZMQError as exc:
        why = (
            "another process (a node still running?) holds it; stop it or choose another port"
            if exc.errno == zmq.EADDRINUSE
            else exc.strerror
        )
        raise EndpointError(f"cannot bind {endpoint}: {why}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT) if ep.scheme == "tcp" else str(ep)


def connect(sock: zmq.Socket, endpoint: str, *, curve: CurveClientKeys | None = None) -> None:
    """Connect ``sock`` to ``endpoint``, as a CURVE client when keys are given."""
    ep = parse_endpoint(endpoint)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey = _keypair(curve.secret_file)
        try:
            sock.curve_serverkey, _ = zmq.auth.load_certificate(curve.server_public_file)
        except (OSError, ValueError) as exc:
            raise EndpointError(
                f"cannot read the server's public key {curve.server_public_file}: {exc}"
            ) from None
    sock.connect(str(ep))


def _keypair(secret_file: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``*.key_secret`` file made by ``zmq.auth.create_certificates``."""
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise EndpointError(f"cannot read the CURVE key file {secret_file}: {exc}") from None
    if secret is None:
        raise EndpointError(f"{secret_file} holds no secret key (use the .key_secret file)")
    return public, secret


def start_authenticator(ctx: zmq.Context, curve: CurveServerKeys):
    """Start pyzmq's ZAP authenticator for ``ctx`` allowing only the authorised client keys.

    Returns the authenticator; call ``.stop()`` on shutdown.
    """
    from zmq.auth.thread import ThreadAuthenticator

    if not Path(curve.authorized_clients_dir).is_dir():
        raise EndpointError(f"CURVE client folder {curve.authorized_clients_dir} does not exist")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(curve.authorized_clients_dir))
    return auth
