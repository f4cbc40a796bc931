#include "proxy/listener_tls.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace accel {

namespace ssl = boost::asio::ssl;

namespace {

// The oldest queued OpenSSL error as text (the queue is cleared): why a file was refused.
std::string openssl_reason() {
  unsigned long code = ERR_peek_error();
  ERR_clear_error();
  if (code == 0) return "no details from OpenSSL";
  const char* reason = ERR_reason_error_string(code);
  return reason ? reason : "error " + std::to_string(code);
}

// Opens a file the config names, with errno's reason when it cannot be read.
std::FILE* open_pem(const std::string& path, const char* key) {
  std::FILE* f = std::fopen(path.c_str(), "re");
  if (!f) throw ConfigError(std::string(key) + " '" + path + "': cannot read: " + std::strerror(errno));
  return f;
}

}  // namespace

std::shared_ptr<ssl::context> load_listener_tls(const ListenTls& tls) {
  ERR_clear_error();
  auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX* native = context->native_handle();
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  context->set_options(ssl::context::default_workarounds | ssl::context::single_dh_use);

  // Read first with plain stdio, so an unreadable file says so rather than an OpenSSL code.
  std::fclose(open_pem(tls.cert_file, "tls.cert_file"));
  if (SSL_CTX_use_certificate_chain_file(native, tls.cert_file.c_str()) != 1)
    throw ConfigError("tls.cert_file '" + tls.cert_file + "': no PEM certificate (" + openssl_reason() + ")");

  std::FILE* key_in = open_pem(tls.key_file, "tls.key_file");
  // No passphrase: OpenSSL's default callback would prompt on a terminal for an encrypted key.
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  EVP_PKEY* key = PEM_read_PrivateKey(key_in, nullptr, no_passphrase, nullptr);
  std::fclose(key_in);
  if (!key)
    throw ConfigError("tls.key_file '" + tls.key_file + "': no unencrypted PEM private key (" + openssl_reason() + ")");
  const bool matches = X509_check_private_key(SSL_CTX_get0_certificate(native), key) == 1;
  const bool used = matches && SSL_CTX_use_PrivateKey(native, key) == 1;
  EVP_PKEY_free(key);
  if (!matches)
    throw ConfigError("tls.key_file '" + tls.key_file + "' does not match the certificate in tls.cert_file '" +
                      tls.cert_file + "'");
  if (!used) throw ConfigError("tls.key_file '" + tls.key_file + "': cannot use the key (" + openssl_reason() + ")");
  ERR_clear_error();
  return context;
}

std::string describe_certificate(ssl::context& context) {
  X509* cert = SSL_CTX_get0_certificate(context.native_handle());
  if (!cert) return "none";
  std::string out = "serial=";
  if (BIGNUM* serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)) {
    if (char* hex = BN_bn2hex(serial)) {
      out += hex;
      OPENSSL_free(hex);
    }
    BN_free(serial);
  }
  out += " not_after=";
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    if (ASN1_TIME_print(bio, X509_get0_notAfter(cert)) == 1) {
      char* data = nullptr;
      long n = BIO_get_mem_data(bio, &data);
      out.append(data, static_cast<size_t>(n));
    }
    BIO_free(bio);
  }
  char subject[256];
  X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof subject);
  out += " subject=\"";
  out += subject;
  out += '"';
  return out;
}

}  // namespace accel
