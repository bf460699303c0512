"""The server's TLS context: the configured certificate, or a self-signed one.

One context serves both the implicit-TLS port (RFC 8314) and STARTTLS on the
plain port (RFC 3207).
"""

import datetime
import ipaddress
import os
import ssl
import tempfile
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blackhole.errors import BlackholeError

VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def server_context(cert=None, key=None, min_version="1.2", mailname="localhost"):
    """A server SSLContext; without cert and key, a self-signed certificate for ``mailname``."""
    if min_version not in VERSIONS:
        raise BlackholeError(
            f"Unknown TLS version '{min_version}': choose one of {', '.join(VERSIONS)}"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.options |= ssl.OP_NO_RENEGOTIATION  # a client cannot make us redo handshakes
    if VERSIONS[min_version] < ssl.TLSVersion.TLSv1_2:
        # Asked for on purpose, to test old senders: OpenSSL 3 also needs
        # security level 0 before it will speak TLS 1.0 or 1.1.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = VERSIONS[min_version]
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    else:
        context.minimum_version = VERSIONS[min_version]
    if cert is None and key is None:
        with tempfile.TemporaryDirectory() as private:
            path = os.path.join(private, "self-signed.pem")
            with open(path, "wb") as pem:
                pem.write(self_signed(mailname))
            context.load_cert_chain(path)
        return context
    _load(context, cert, key)
    return context


def _load(context, cert, key):
    """Load the configured files, with the 1.x messages for the usual mistakes."""
    if cert is None:
        raise BlackholeError("You need to set an SSL certificate and SSL key")
    if not os.path.isfile(cert):
        raise BlackholeError(f"Certificate '{cert}' does not exist")
    if key is not None and not os.path.isfile(key):
        raise BlackholeError(f"Keyfile '{key}' does not exist")
    try:
        # A passphrase cannot be asked for: an encrypted key fails to load.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except PermissionError as error:
        raise BlackholeError(f"Cannot read '{error.filename}': Permission denied") from None
    except (ssl.SSLError, OSError) as error:
        if _encrypted(key or cert):
            raise BlackholeError(
                f"Key '{key or cert}' is encrypted: give blackhole an unencrypted key"
            ) from None
        if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
            raise BlackholeError(
                f"Certificate '{cert}' and key '{key}' do not match"
            ) from None
        if key is None:
            raise BlackholeError("You need to set an SSL certificate and SSL key") from None
        raise BlackholeError(
            f"Certificate '{cert}' or key '{key}' is not a valid PEM file"
        ) from None


def _encrypted(path):
    """A PEM key protected by a passphrase (PKCS#8 or the older OpenSSL form)."""
    try:
        with open(path, "rb") as pem:
            return b"ENCRYPTED" in pem.read(1 << 20)
    except OSError:
        return False


def self_signed(mailname):
    """A fresh key and a self-signed certificate for ``mailname``, as one PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, mailname[:64])])
    try:
        alternative = x509.IPAddress(ipaddress.ip_address(mailname))
    except ValueError:
        alternative = x509.DNSName(mailname)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + certificate.public_bytes(serialization.Encoding.PEM)
