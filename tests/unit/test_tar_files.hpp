// Small tar streams for unit tests: entries written with fixed modes and mtime.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "convert/streams.hpp"
#include "convert/tar.hpp"

struct FileSpec {
  FileSpec(std::string n, accel::convert::EntryType t, std::string c = "", std::string l = "")
      : name(std::move(n)), type(t), content(std::move(c)), link(std::move(l)) {}
  std::string name;
  accel::convert::EntryType type;
  std::string content;  // regular files
  std::string link;     // hardlinks and symlinks
};

// A whole tar of `files`: directories 0755, the rest 0644, all at one mtime.
inline std::string tar_of(const std::vector<FileSpec>& files) {
  using namespace accel::convert;
  StringSink sink;
  TarWriter writer(sink);
  for (const auto& f : files) {
    TarEntry e;
    e.name = f.name;
    e.type = f.type;
    e.mode = f.type == EntryType::directory ? 0755 : 0644;
    e.mtime = {1'700'000'000, 0};
    e.link_name = f.link;
    e.size = f.type == EntryType::regular ? f.content.size() : 0;
    writer.write_header(e);
    if (e.size) writer.write_content(f.content.data(), f.content.size());
    writer.pad();
  }
  writer.finish();
  return sink.data;
}
