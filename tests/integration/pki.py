"""A throwaway PKI for TLS tests: a CA and the server certificates it signs.

Used by test_tls.py (an https upstream) and test_listen_tls.py (the proxy's own https
listener). Keys are EC P-256: fast to make, fine for TLS 1.2 and 1.3. Nothing here is trusted
by the system store, so a client that is not given `ca` must fail.
"""
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pki:
    ca: Path            # CA certificate (PEM): the `ca_file`
    server: tuple       # (cert, key) for IP 127.0.0.1 and DNS localhost
    wrong_name: tuple   # (cert, key) for DNS wrong.example only
    ca_cert: object = None  # the CA as cryptography objects, to sign more (issue_server)
    ca_key: object = None


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (builder.not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2)))


def _write_key(key, path):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(cert, path):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _leaf(directory, stem, ca_key, ca_cert, cn, sans):
    key = _key()
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.SubjectAlternativeName(sans), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    cert = _validity(builder).sign(ca_key, hashes.SHA256())
    cert_path, key_path = Path(directory) / f"{stem}.pem", Path(directory) / f"{stem}-key.pem"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    ca_key = _key()
    ca_builder = (x509.CertificateBuilder().subject_name(_name("accel-proxy test CA"))
                  .issuer_name(_name("accel-proxy test CA")).public_key(ca_key.public_key())
                  .serial_number(x509.random_serial_number())
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .add_extension(x509.KeyUsage(
                      digital_signature=True, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                  .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                                 critical=False))
    ca_cert = _validity(ca_builder).sign(ca_key, hashes.SHA256())
    ca_path = directory / "ca.pem"
    _write_cert(ca_cert, ca_path)
    server = _leaf(directory, "server", ca_key, ca_cert, "127.0.0.1",
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    wrong = _leaf(directory, "wrong-name", ca_key, ca_cert, "wrong.example",
                  [x509.DNSName("wrong.example")])
    return Pki(ca_path, server, wrong, ca_cert, ca_key)


def issue_server(pki: Pki, directory: Path, stem: str) -> tuple:
    """Another (cert, key) for 127.0.0.1 and localhost, signed by the same CA (new serial)."""
    return _leaf(directory, stem, pki.ca_key, pki.ca_cert, "127.0.0.1",
                 [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])


def serial_of(cert_pem_path) -> int:
    return x509.load_pem_x509_certificate(Path(cert_pem_path).read_bytes()).serial_number


def serial_of_der(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number
