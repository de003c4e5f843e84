"""The client-side TLS context of the MQTT 5 and RabbitMQ endpoints, from their TLS keys.

::

    context = client_context(config)        # None when the broker URL is not a TLS one
    server_name = config.tls_server_name or host

Made afresh on every connect of the endpoint, so renewed files (a rotated client certificate,
a new CA bundle) are used at the next reconnect. A file that vanished or no longer parses since
the config was validated raises ``OSError`` (``ssl.SSLError`` is one), which the endpoints treat
as a failed connect: ``down``, with the reason, and another attempt after the backoff.
The AMQP 1.0 endpoint uses proton's own TLS (``SSLDomain``), from the same keys.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

from ..config import BrokerTLS, tls_scheme


class RecordingSocket(ssl.SSLSocket):
    """An ``SSLSocket`` that keeps its TLS failure (not a "want read/write") in ``tls_failure``:
    paho catches what a read or write raises and only says the connection was lost."""

    tls_failure: str | None = None

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as error:
            self.tls_failure = describe(error)
            raise

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as error:
            self.tls_failure = describe(error)
            raise


class NamedContext(ssl.SSLContext):
    """An ``SSLContext`` whose sockets check (and send as SNI) ``server_name`` when it is set,
    whatever host name the library wrapping the socket gives (paho gives the host it connects
    to, and has no setting for another).

    With ``handshake_on_wrap`` (paho's blocking connect) the handshake is done here, and a
    socket whose handshake failed is closed before the error leaves: paho drops it unclosed.
    Its sockets are then :class:`RecordingSocket` s.
    """

    server_name: str | None = None
    handshake_on_wrap = False

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.server_name is not None:
            kwargs["server_hostname"] = self.server_name
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        if self.handshake_on_wrap:
            try:
                wrapped.do_handshake()  # paho's own do_handshake() then has nothing left to do
            except BaseException:
                wrapped.close()
                raise
        return wrapped


def client_context(config: BrokerTLS, *, handshake_on_wrap: bool = False) -> NamedContext | None:
    """A TLS client context for ``config``'s broker, or None for a plaintext URL.

    ``ca_file`` replaces the system's CAs (only the CAs in it are trusted); ``tls_verify =
    false`` turns off both the chain and the name check; ``cert_file``/``key_file`` are the
    client certificate offered when the broker asks for one; ``tls_server_name`` the name the
    broker's certificate must carry (default: the host connected to).
    """
    if not tls_scheme(config):
        return None
    # What ssl.create_default_context does for a client, in the subclass.
    context = NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.ca_file is not None:
        context.load_verify_locations(cafile=config.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.server_name = config.tls_server_name
    context.handshake_on_wrap = handshake_on_wrap
    if handshake_on_wrap:
        context.sslsocket_class = RecordingSocket
    if not config.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.cert_file is not None:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def describe(error: BaseException) -> str:
    """One line for a TLS (or socket) failure: OpenSSL's reason and what it verified, without
    the ``(_ssl.c:NNNN)`` noise."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        if error.reason:
            return f"TLS: {error.reason.lower().replace('_', ' ')}"
        text = _SSL_SOURCE.sub("", error.strerror or str(error))
        return f"TLS: {text}"  # an EOF or a reset mid-handshake: the broker hung up on us
    return str(error) or type(error).__name__


_SSL_SOURCE = re.compile(r" \(_ssl\.c:[0-9]+\)")
