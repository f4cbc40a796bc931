// `accel-proxy check`: re-does, for an image in an accelerated format, the checks its consumer
// makes when it loads it (nydusd and the kernel for Nydus, stargz-snapshotter for eStargz), and
// says exactly what is wrong. The image is read through an ImageSource, so a registry image and
// an OCI layout are checked alike, including images made by other tools.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/image.hpp"

namespace accel::convert {

struct CheckReport {
  std::vector<std::string> passed;  // one line per check that passed ("blob sha256:...: 312 chunks verified")
  std::vector<std::string> faults;  // one line per fault, naming it and where it is
  bool ok() const { return faults.empty(); }
};

struct CheckOptions {
  // Nydus: where to write the merged bootstrap (image.boot) and each blob's uncompressed device
  // image (<blob id>: every chunk at its uncompressed offset, what nydusd's fscache mode hands
  // the kernel), so the image can be mounted with the kernel's EROFS driver. Empty: not written.
  std::string write_devices_dir;
};

// Checks one image manifest whose layers are Nydus (a bootstrap layer last).
void check_nydus_manifest(ImageSource& source, const ManifestBytes& manifest, const CheckOptions& options,
                          CheckReport& report);

// Checks one image manifest whose layers are eStargz: per layer the footer, the TOC (and its
// digest against the layer's containerd.io/snapshot/stargz/toc.digest annotation), every
// regular file's digest and every chunk's digest read from the chunk's own offset, as a lazy
// reader would.
void check_estargz_manifest(ImageSource& source, const ManifestBytes& manifest, const CheckOptions& options,
                            CheckReport& report);

}  // namespace accel::convert
