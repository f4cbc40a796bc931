#include "variants/startup_recorder.hpp"

#include <algorithm>
#include <map>
#include <set>

namespace accel {

namespace {

bool is_probe(const std::pair<uint64_t, uint64_t>& r) {
  return r.first == 0 && r.second <= 2;  // stargz-snapshotter's "bytes=0-1": redirects, size, liveness
}

// Whether a read touches the blob's index: a lazy puller's first step. A whole-blob GET does
// too; a plain pull makes only such reads, so its start-up has no files and is never kept.
bool reads_index(const ReadEvent& e, const convert::FileIndex& index) {
  if (e.ranges.empty()) return true;
  for (const auto& r : e.ranges)
    if (!is_probe(r) && index.reads_index(r.first, r.second)) return true;
  return false;
}

// A range that is a lazy puller's read of file data (not a probe, not a whole download).
bool is_data_read(const std::pair<uint64_t, uint64_t>& r, const convert::FileIndex& index) {
  return !is_probe(r) && !(r.first == 0 && r.second >= index.blob_size) && r.first < index.index_offset;
}

// A blob's contiguous prefix [0, prefix) fetched so far in a start-up, and which requests
// extended it (background fetchers only ever do).
struct PrefixScan {
  uint64_t prefix = 0;
  std::map<uint64_t, uint64_t> fetched;  // other fetched ranges: begin -> end
  std::vector<size_t> extending;         // event positions

  bool add(uint64_t begin, uint64_t end) {
    if (begin > prefix || end <= prefix) {
      auto& e = fetched[begin];
      e = std::max(e, end);
      return false;
    }
    prefix = end;
    for (auto it = fetched.begin(); it != fetched.end() && it->first <= prefix;) {
      prefix = std::max(prefix, it->second);
      it = fetched.erase(it);
    }
    return true;
  }
};

}  // namespace

StartupRecorder::StartupRecorder(int64_t window_ms, RecorderLimits limits) : window_ms_(window_ms), limits_(limits) {}

void StartupRecorder::record(const std::string& client, ReadEvent event) {
  std::lock_guard lock(mutex_);
  auto it = logs_.find(client);
  if (it == logs_.end()) {
    if (logs_.size() >= limits_.clients) {
      auto idle = std::min_element(logs_.begin(), logs_.end(),
                                   [](const auto& a, const auto& b) { return a.second.last_ms < b.second.last_ms; });
      logs_.erase(idle);
    }
    it = logs_.emplace(client, ClientLog{}).first;
  }
  auto& log = it->second;
  if (log.events.size() >= limits_.events_per_client) log.events.pop_front();
  log.last_ms = std::max(log.last_ms, event.at_ms);
  log.events.push_back(std::move(event));
}

size_t StartupRecorder::pending_events() const {
  std::lock_guard lock(mutex_);
  size_t n = 0;
  for (const auto& [client, log] : logs_) n += log.events.size();
  return n;
}

std::vector<Startup> StartupRecorder::collect(int64_t now_ms, LayerCatalog& catalog,
                                              const std::function<bool(const std::string&)>& wanted) {
  std::unordered_map<std::string, ClientLog> taken;
  {
    std::lock_guard lock(mutex_);
    taken.swap(logs_);
  }
  std::vector<Startup> out;
  const int64_t span_ms = window_ms_ + kGraceMs;
  for (auto& [client, log] : taken) {
    auto& events = log.events;
    std::stable_sort(events.begin(), events.end(), [](const auto& a, const auto& b) { return a.at_ms < b.at_ms; });
    for (const auto& e : events)
      if (e.manifest) catalog.manifest_served(e.scope, e.digest);
    std::vector<std::optional<LayerRef>> refs(events.size());
    std::map<std::string, int64_t> starts;  // image -> its start-up's first index read
    for (size_t i = 0; i < events.size(); ++i) {
      if (events[i].manifest) continue;
      refs[i] = catalog.layer(events[i].scope, events[i].digest);
      if (refs[i] && reads_index(events[i], *refs[i]->index)) starts.try_emplace(refs[i]->image, events[i].at_ms);
    }
    std::vector<bool> consumed(events.size(), false);
    for (const auto& [image, t0] : starts) {
      if (wanted && !wanted(image)) {
        for (size_t i = 0; i < events.size(); ++i) consumed[i] = consumed[i] || (refs[i] && refs[i]->image == image);
        continue;
      }
      if (now_ms < t0 + span_ms) continue;  // still open
      const int64_t end_ms = t0 + window_ms_;
      std::vector<size_t> reads;  // this start-up's data requests, in time order
      std::map<std::string, PrefixScan> scans;
      for (size_t i = 0; i < events.size(); ++i) {
        if (!refs[i] || refs[i]->image != image || events[i].at_ms >= end_ms) continue;
        consumed[i] = true;
        if (events[i].at_ms < t0) continue;
        bool data = false, extends = false;
        for (const auto& r : events[i].ranges)
          if (is_data_read(r, *refs[i]->index)) {
            data = true;
            extends |= scans[events[i].digest].add(r.first, r.second);
          }
        if (!data) continue;
        reads.push_back(i);
        if (extends) scans[events[i].digest].extending.push_back(i);
      }
      std::set<size_t> background;
      for (const auto& [digest, scan] : scans)
        if (scan.extending.size() >= kScanRequests) background.insert(scan.extending.begin(), scan.extending.end());
      Startup s;
      s.image = image;
      s.client = client;
      s.started_ms = t0;
      std::set<std::string> seen;
      for (size_t i : reads) {
        if (background.count(i)) {
          ++s.background_reads;
          continue;
        }
        ++s.reads;
        const auto& index = *refs[i]->index;
        for (const auto& r : events[i].ranges) {
          if (!is_data_read(r, index)) continue;
          for (uint32_t f : index.files_read(r.first, r.second))
            if (s.files.size() < limits_.files_per_startup && seen.insert(index.paths[f]).second)
              s.files.push_back(index.paths[f]);
        }
      }
      if (!s.files.empty()) out.push_back(std::move(s));
    }
    // What is left may still join a start-up (or start one) until it is too old to.
    std::deque<ReadEvent> kept;
    for (size_t i = 0; i < events.size(); ++i)
      if (!consumed[i] && !events[i].manifest && events[i].at_ms >= now_ms - 2 * span_ms) kept.push_back(std::move(events[i]));
    events = std::move(kept);
  }
  std::lock_guard lock(mutex_);
  for (auto& [client, log] : taken) {
    if (log.events.empty()) continue;
    auto& now_log = logs_[client];  // events recorded meanwhile are newer: put the kept ones first
    now_log.last_ms = std::max(now_log.last_ms, log.last_ms);
    for (auto it = log.events.rbegin(); it != log.events.rend(); ++it) {
      if (now_log.events.size() >= limits_.events_per_client) break;
      now_log.events.push_front(std::move(*it));
    }
  }
  return out;
}

}  // namespace accel
