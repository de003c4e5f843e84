"""TLS for the HTTP server: the ``ssl.SSLContext`` of a listener, rebuilt when its files change.

::

    tls = ServerTLS.from_config(entrypoint)     # None without tls_cert_file
    await serve_http(app, host, port, tls=tls)  # HTTPS, and WSS for WebSocket upgrades

The server asks :meth:`ServerTLS.context` for the context of each connection it accepts; that
stats the certificate, key and client CA files (a few ``stat`` calls, no reads) and, when one of
them changed (inode, size or modification time), builds a new context from them. A connection
keeps the context it started with, so replacing the files (certificate renewal) changes what the
next connection is served and drops nothing. A new set of files that does not load (a key that
does not match, a file half written) is logged once and the previous context kept; the next
change of the files is tried again.

The context: TLS 1.2 at least, the ``ssl`` module's server defaults otherwise (its cipher
choice, no compression), no renegotiation, ALPN ``http/1.1``. With a client CA
(``tls_client_ca_file``) a client certificate signed by it is required: the handshake fails
without one, and only that CA is trusted (never the system's). What the handshake costs in time
counts against the server's ``header_timeout`` (the server does it lazily, in the connection's
task, on the first read).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from typing import NoReturn, Protocol

from ..errors import ConfigError

log = logging.getLogger("mediation.http")

# (device, inode, size, modification time in ns) of each file, in order.
_Signature = tuple[tuple[int, int, int, int], ...]


class TLSSettings(Protocol):
    """The entrypoint config keys this module reads (see mediation.config)."""

    @property
    def name(self) -> str: ...
    @property
    def tls_cert_file(self) -> str | None: ...
    @property
    def tls_key_file(self) -> str | None: ...
    @property
    def tls_client_ca_file(self) -> str | None: ...


def _no_password() -> NoReturn:
    # Without a callback, OpenSSL would prompt for the passphrase of an encrypted key on the
    # terminal, blocking the engine.
    raise ValueError("the key is encrypted (give an unencrypted key file)")


def server_context(cert_file: str, key_file: str, client_ca_file: str | None) -> ssl.SSLContext:
    """A server context for these files; ``OSError``, ``ssl.SSLError`` or ``ValueError`` if they
    do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_file, key_file, password=_no_password)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(eq=False)
class ServerTLS:
    """The TLS files of one listener and the context built from their current contents."""

    name: str
    cert_file: str
    key_file: str
    client_ca_file: str | None
    _context: ssl.SSLContext
    _signature: _Signature

    @classmethod
    def from_config(cls, settings: TLSSettings) -> ServerTLS | None:
        """The TLS of an entrypoint, or None when it has no ``tls_cert_file``; ConfigError if its
        files do not load (the config was validated, so only if they changed since)."""
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            return None
        return cls.load(
            settings.name,
            settings.tls_cert_file,
            settings.tls_key_file,
            settings.tls_client_ca_file,
        )

    @classmethod
    def load(
        cls, name: str, cert_file: str, key_file: str, client_ca_file: str | None = None
    ) -> ServerTLS:
        """Load the files now; ConfigError (naming ``name``) if they do not."""
        files = (cert_file, key_file, client_ca_file)
        try:
            signature = _signature(files)
            context = server_context(cert_file, key_file, client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as error:
            raise ConfigError(f"{name}: TLS files do not load: {_describe(error)}") from None
        return cls(name, cert_file, key_file, client_ca_file, context, signature)

    @property
    def requires_client_certificate(self) -> bool:
        return self.client_ca_file is not None

    def context(self) -> ssl.SSLContext:
        """The context for a new connection: rebuilt first if the files changed (and load)."""
        files = (self.cert_file, self.key_file, self.client_ca_file)
        try:
            signature = _signature(files)
        except OSError:
            return self._context  # a file being replaced (gone for a moment): keep the old one
        if signature == self._signature:
            return self._context
        self._signature = signature  # tried once per change, whether it loads or not
        try:
            context = server_context(self.cert_file, self.key_file, self.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as error:
            log.error(
                "TLS files changed but do not load; the previous certificate is kept",
                extra={"entrypoint": self.name, "error": _describe(error)},
            )
            return self._context
        log.info("TLS files reloaded", extra={"entrypoint": self.name})
        self._context = context
        return context


def _signature(files: tuple[str | None, ...]) -> _Signature:
    stats = (os.stat(f) for f in files if f is not None)
    return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, ssl.SSLError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)
