#include "convert/file_index.hpp"

#include <algorithm>
#include <map>
#include <set>

namespace accel::convert {

std::vector<uint32_t> FileIndex::files_read(uint64_t begin, uint64_t end) const {
  end = std::min(end, blob_size);
  std::vector<uint32_t> out;
  if (begin >= end) return out;
  // Spans are sorted and disjoint, so their ends are sorted too.
  auto first = std::upper_bound(spans.begin(), spans.end(), begin,
                                [](uint64_t at, const Span& s) { return at < s.end; });
  std::vector<const Span*> hit;
  for (auto it = first; it != spans.end() && it->begin < end; ++it) hit.push_back(&*it);
  if (hit.empty()) return out;

  std::set<uint32_t> seen;
  auto add_in_blob_order = [&](const std::set<uint32_t>& wanted) {
    for (const Span* s : hit)
      if (wanted.count(s->file) && seen.insert(s->file).second) out.push_back(s->file);
  };
  if (window == 0 || begin % window != 0) {  // an exact read: everything it touches was wanted
    std::set<uint32_t> all;
    for (const Span* s : hit) all.insert(s->file);
    add_in_blob_order(all);
    return out;
  }

  // Which of the range's windows each file reaches into, and who is in each window.
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> reach;  // file -> (first window, last window)
  std::map<uint64_t, std::set<uint32_t>> occupants;          // window -> files
  for (const Span* s : hit) {
    const uint64_t b = std::max(begin, s->begin), e = std::min(end, s->end);
    const uint64_t lo = b / window, hi = (e - 1) / window;
    auto [it, fresh] = reach.try_emplace(s->file, lo, hi);
    if (!fresh) it->second = {std::min(it->second.first, lo), std::max(it->second.second, hi)};
    for (uint64_t w = lo; w <= hi; ++w) occupants[w].insert(s->file);
  }
  std::set<uint32_t> certain;
  for (const auto& [file, r] : reach)
    if (r.second > r.first) certain.insert(file);
  for (const auto& [w, files] : occupants)
    if (files.size() == 1) certain.insert(*files.begin());
  std::set<uint64_t> explained;
  for (uint32_t file : certain)
    for (uint64_t w = reach[file].first; w <= reach[file].second; ++w) explained.insert(w);
  std::set<uint32_t> wanted = certain;
  for (const auto& [w, files] : occupants)
    if (!explained.count(w)) wanted.insert(files.begin(), files.end());
  add_in_blob_order(wanted);
  return out;
}

}  // namespace accel::convert
