"""Whether a set of TLS files can work, for the config check: one answer for every TLS user.

Entrypoints (``tls_cert_file``, ``tls_key_file``, ``tls_client_ca_file``) and broker endpoints
(``cert_file``, ``key_file``, ``ca_file``) name the same three kinds of file; this module says
what is wrong with a set of them, naming the file at fault, so that the config error can name
its key. Each file must be readable and PEM, the key unencrypted (nothing may ever prompt for a
passphrase) and matching the certificate, and the ``ssl`` module must accept the lot. Pure: it
reads files and parses them, nothing else.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Which = Literal["cert", "key", "ca"]

_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:[A-Z]+ )?)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL
)


@dataclass(frozen=True)
class Problem:
    """What is wrong, and with which file (``key`` may mean a key inside the cert file)."""

    which: Which
    reason: str


def tls_files_problem(
    cert_file: str | None, key_file: str | None, ca_file: str | None, *, server: bool
) -> Problem | None:
    """What is wrong with these files, or None when they load.

    ``key_file`` None: the key is looked for in ``cert_file`` (one PEM holding both), and its
    absence is the cert file's problem. ``server``: the files serve connections (an entrypoint),
    else they identify a client to a broker.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    contents: dict[Which, bytes] = {}
    files: tuple[tuple[Which, str | None], ...] = (
        ("cert", cert_file),
        ("key", key_file),
        ("ca", ca_file),
    )
    for which, name in files:
        if name is None:
            continue
        try:
            contents[which] = Path(name).read_bytes()
        except (OSError, ValueError) as error:  # ValueError: a path with a NUL in it
            reason = getattr(error, "strerror", None) or error
            return Problem(which, f"cannot read {name}: {reason}")
    if ca_file is not None:
        try:
            x509.load_pem_x509_certificates(contents["ca"])
        except ValueError:
            return Problem("ca", f"no PEM certificate in {ca_file}")
    if cert_file is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificates(contents["cert"])[0]
    except ValueError:
        return Problem("cert", f"no PEM certificate in {cert_file}")
    where: Which = "key" if key_file is not None else "cert"
    where_name = key_file if key_file is not None else cert_file
    found = _PEM_KEY.search(contents[where])
    if found is None:
        hint = "" if key_file is not None else " (give it in the key file)"
        return Problem(where, f"no PEM private key in {where_name}{hint}")
    try:
        private_key = load_pem_private_key(found.group(0), password=None)
    except TypeError:
        return Problem(where, f"{where_name} is encrypted (give an unencrypted key)")
    except (ValueError, UnsupportedAlgorithm):
        return Problem(where, f"no PEM private key in {where_name}")
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if private_key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        return Problem(where, f"does not match the certificate in {cert_file}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert_file, key_file, password="")
    except (OSError, ssl.SSLError) as error:
        return Problem("cert", f"refused by the ssl module: {error}")
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as error:
            return Problem("ca", f"refused by the ssl module: {error}")
    return None
