// Learned prefetch, part one: what lazy pullers read of a variant's blobs at start-up (plain
// logic, no sockets; unit-tested).
//
// The HTTP side hands every variant object it served from the cache, after the client passed
// its upstream read check, to record(): a mutex'd append to the client's event log, bounded.
// collect() then, on the learning thread, groups a client's events into start-ups: a start-up of
// an image begins with the client's first read of a layer's index (eStargz: footer and TOC;
// Nydus: the bootstrap layer or a blob's meta) and lasts `window`; its data reads are mapped to
// files through each layer's FileIndex, in the order first read. A client is an address and a
// credential (hashed by the caller). Background fetches (stargz-snapshotter's background fetcher,
// nydusd's prefetch-all) read a layer from its first byte on, in order, skipping what is cached:
// every such request starts inside or at the end of the contiguous prefix the client has
// fetched already. When six or more of a start-up's requests for a blob extend that prefix,
// all of them are taken as background and left out; fewer are a start-up reading the first
// files of a layer (a binary, then its library) (docs/DECISIONS.md, "Learned prefetch").
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "convert/file_index.hpp"

namespace accel {

// One object served to a client: a manifest, or a blob with the ranges read.
struct ReadEvent {
  int64_t at_ms = 0;
  bool manifest = false;
  std::string scope;   // "upstream/repository"
  std::string digest;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end); empty: the whole object
};

// A blob as a layer of a variant image.
struct LayerRef {
  std::string image;  // the learning key: "upstream/repository@source-digest|format"
  std::shared_ptr<const convert::FileIndex> index;
};

// What the recorder needs to know of the objects it saw; answered from the cache.
class LayerCatalog {
 public:
  virtual ~LayerCatalog() = default;
  // A manifest served in `scope`: if it is a variant's image manifest, its layers become known.
  virtual void manifest_served(const std::string& scope, const std::string& digest) = 0;
  // The layer a blob of `scope` is (once a manifest naming it was served), or nullopt.
  virtual std::optional<LayerRef> layer(const std::string& scope, const std::string& digest) = 0;
};

struct Startup {
  std::string image;
  std::string client;
  int64_t started_ms = 0;           // the first index read
  std::vector<std::string> files;   // in the order first read
  size_t reads = 0;                 // data requests counted
  size_t background_reads = 0;      // data requests left out as a background fetch
};

struct RecorderLimits {
  size_t events_per_client = 4096;  // the oldest go first
  size_t clients = 1024;            // the client idle longest goes first
  size_t files_per_startup = 4096;
};

class StartupRecorder {
 public:
  StartupRecorder(int64_t window_ms, RecorderLimits limits = {});

  // Any thread; cheap.
  void record(const std::string& client, ReadEvent event);

  // The start-ups whose window has passed by `now_ms`, with at least one file read; their
  // events are dropped, and so are events too old to belong to any start-up, and those of
  // images `wanted` says no to (learned already: not mapped to files at all). One thread at a
  // time (the catalog is called without the recorder's lock held).
  std::vector<Startup> collect(int64_t now_ms, LayerCatalog& catalog,
                               const std::function<bool(const std::string& image)>& wanted = {});

  size_t pending_events() const;

  // A start-up is complete this long after its window ends (requests still in flight).
  static constexpr int64_t kGraceMs = 500;
  // Requests for a blob that extend its fetched prefix this often are a background scan.
  static constexpr size_t kScanRequests = 6;

 private:
  struct ClientLog {
    std::deque<ReadEvent> events;
    int64_t last_ms = 0;
  };

  int64_t window_ms_;
  RecorderLimits limits_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, ClientLog> logs_;
};

}  // namespace accel
