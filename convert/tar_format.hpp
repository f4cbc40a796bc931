// Byte layout of tar header blocks (V7, POSIX ustar, GNU, STAR), shared by the tar reader, the
// tar writer and their tests. Internal to convert/: callers use tar.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace accel::convert::tar_format {

constexpr size_t kBlockSize = 512;

// Bytes of zero padding that follow `size` content bytes up to the next block boundary.
constexpr uint64_t padding_after(uint64_t size) { return (kBlockSize - size % kBlockSize) % kBlockSize; }

struct Field {
  size_t offset;
  size_t size;
};

// V7 fields, common to every format.
constexpr Field kName{0, 100};
constexpr Field kMode{100, 8};
constexpr Field kUid{108, 8};
constexpr Field kGid{116, 8};
constexpr Field kSize{124, 12};
constexpr Field kMtime{136, 12};
constexpr Field kChecksum{148, 8};
constexpr Field kTypeflag{156, 1};
constexpr Field kLinkName{157, 100};

// ustar (and PAX, GNU, STAR) fields.
constexpr Field kMagic{257, 6};
constexpr Field kVersion{263, 2};
constexpr Field kUname{265, 32};
constexpr Field kGname{297, 32};
constexpr Field kDevMajor{329, 8};
constexpr Field kDevMinor{337, 8};
constexpr Field kPrefix{345, 155};  // ustar only

// Old GNU format: no prefix; access/change times, an inline sparse map and the real size.
constexpr Field kGnuAtime{345, 12};
constexpr Field kGnuCtime{357, 12};
constexpr size_t kGnuSparseOffset = 386;     // 4 entries of (offset[12], length[12])
constexpr size_t kGnuSparseEntries = 4;
constexpr size_t kGnuIsExtended = 482;       // non-zero: an extension block follows
constexpr Field kGnuRealSize{483, 12};
constexpr size_t kSparseEntrySize = 24;
constexpr size_t kExtSparseEntries = 21;     // entries in a sparse extension block
constexpr size_t kExtIsExtended = 504;

// STAR format (ustar magic plus a "tar\0" trailer): shorter prefix, access/change times.
constexpr Field kStarPrefix{345, 131};
constexpr Field kStarAtime{476, 12};
constexpr Field kStarCtime{488, 12};
constexpr Field kStarTrailer{508, 4};

constexpr std::string_view kMagicUstar{"ustar\0", 6};
constexpr std::string_view kVersionUstar{"00", 2};
constexpr std::string_view kMagicGnu{"ustar ", 6};
constexpr std::string_view kVersionGnu{" \0", 2};
constexpr std::string_view kTrailerStar{"tar\0", 4};

// Type flags that are not entries of their own.
constexpr char kTypePaxLocal = 'x';
constexpr char kTypePaxGlobal = 'g';
constexpr char kTypeGnuLongName = 'L';
constexpr char kTypeGnuLongLink = 'K';
constexpr char kTypeGnuSparse = 'S';
constexpr char kTypeRegularOld = '\0';
constexpr char kTypeContiguous = '7';

// Largest value an octal field of `size` bytes holds (one byte is kept for the terminator).
constexpr uint64_t max_octal(size_t size) { return (uint64_t{1} << (3 * (size - 1))) - 1; }

// Sum of the header bytes with the checksum field counted as spaces, as unsigned and as signed
// bytes (some old tars summed signed chars; both are accepted on reading).
struct Checksums {
  int64_t unsigned_sum = 0;
  int64_t signed_sum = 0;
};
inline Checksums compute_checksums(const char* block) {
  Checksums sums;
  for (size_t i = 0; i < kBlockSize; ++i) {
    bool in_field = i >= kChecksum.offset && i < kChecksum.offset + kChecksum.size;
    char c = in_field ? ' ' : block[i];
    sums.unsigned_sum += static_cast<unsigned char>(c);
    sums.signed_sum += static_cast<signed char>(c);
  }
  return sums;
}

}  // namespace accel::convert::tar_format
