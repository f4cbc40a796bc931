// FileSink: a file appears under its name only when committed, and then whole, whatever mix of
// small (buffered) and large (written directly) writes made it.
#include <catch2/catch.hpp>
#include <filesystem>
#include <random>
#include <string>

#include "convert/streams.hpp"
#include "test_files.hpp"

namespace fs = std::filesystem;
using namespace accel::convert;

TEST_CASE("FileSink writes small and large pieces in order and publishes only on commit") {
  const auto durability = GENERATE(FileSink::Durability::synced, FileSink::Durability::scratch);
  TempDir dir("accel-file-sink");
  const std::string path = dir.path() + "/blob";
  std::mt19937 rng(7);
  std::string expected;
  {
    FileSink sink(path, durability);
    // Sizes around the 1 MiB buffer and past the 4 MiB writeback step.
    for (size_t size : {100u, 5000u, (3u << 20) + 17, 1u, 1u << 20, (1u << 20) - 1, 5u << 20, 333u}) {
      std::string piece(size, '\0');
      for (auto& c : piece) c = static_cast<char>(rng());
      sink.write(piece.data(), piece.size());
      expected += piece;
    }
    REQUIRE_FALSE(fs::exists(path));  // only a temporary file so far
    CHECK(files_in(dir.path()) == 1);
    sink.commit();
  }
  REQUIRE(fs::exists(path));
  CHECK(fs::file_size(path) == expected.size());
  CHECK(read_file(path) == expected);
  CHECK(files_in(dir.path()) == 1);  // the temporary file became the blob
  CHECK((fs::status(path).permissions() & fs::perms::all) ==
        (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read));
}

TEST_CASE("FileSink left without commit removes its temporary file") {
  TempDir dir("accel-file-sink");
  {
    FileSink sink(dir.path() + "/blob");
    std::string big(6u << 20, 'x');
    sink.write(big.data(), big.size());
  }
  CHECK(files_in(dir.path()) == 0);
}
