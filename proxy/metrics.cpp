#include "proxy/metrics.hpp"

#include <array>
#include <charconv>

namespace accel {
namespace {

// Seconds; from sub-millisecond manifest answers to multi-second blob transfers.
constexpr std::array<double, 14> kBuckets{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,    10};

// Shortest text that reads back as the same double ("0.005", not "0.0050000000000000001").
std::string format_number(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, ec == std::errc() ? end : buf);
}

std::string series(std::string_view name, const std::string& labels, std::string_view extra = {}) {
  std::string s(name);
  if (!labels.empty() || !extra.empty()) {
    s += '{';
    s += labels;
    if (!labels.empty() && !extra.empty()) s += ',';
    s += extra;
    s += '}';
  }
  return s;
}

void append_labels(std::string& out, Labels labels) {
  for (const auto& [k, v] : labels) {
    if (!out.empty()) out += ',';
    out += k;
    out += "=\"";
    for (char c : v) {
      if (c == '\\' || c == '"') out += '\\';
      if (c == '\n') { out += "\\n"; continue; }
      out += c;
    }
    out += '"';
  }
}

}  // namespace

std::string format_labels(Labels labels) {
  std::string out;
  append_labels(out, labels);
  return out;
}

namespace {

// The label text of a sample being recorded, built in a buffer each thread reuses: recording
// runs on every request, and a series that exists already then costs no allocation.
std::string& label_key(Labels labels) {
  thread_local std::string key;
  key.clear();
  append_labels(key, labels);
  return key;
}

template <class Map>
typename Map::mapped_type& series_at(Map& map, const std::string& key) {
  auto it = map.find(key);
  if (it == map.end()) it = map.emplace(key, typename Map::mapped_type{}).first;
  return it->second;
}

}  // namespace

Metrics::Metrics() = default;

void Metrics::describe(std::string_view name, Type type, std::string_view help) {
  std::lock_guard lock(mutex_);
  auto& f = families_[std::string(name)];
  f.type = type;
  f.help = std::string(help);
}

void Metrics::add(std::string_view name, Labels labels, double value) {
  const std::string& key = label_key(labels);
  std::lock_guard lock(mutex_);
  auto it = families_.find(name);
  if (it == families_.end()) it = families_.emplace(std::string(name), Family{}).first;
  series_at(it->second.values, key) += value;
}

void Metrics::set(std::string_view name, Labels labels, double value) {
  const std::string& key = label_key(labels);
  std::lock_guard lock(mutex_);
  auto it = families_.find(name);
  if (it == families_.end()) it = families_.emplace(std::string(name), Family{Type::gauge, {}, {}, {}}).first;
  series_at(it->second.values, key) = value;
}

void Metrics::observe(std::string_view name, Labels labels, double value) {
  const std::string& key = label_key(labels);
  std::lock_guard lock(mutex_);
  auto it = families_.find(name);
  if (it == families_.end()) it = families_.emplace(std::string(name), Family{Type::histogram, {}, {}, {}}).first;
  auto& h = series_at(it->second.histograms, key);
  if (h.bucket_counts.empty()) h.bucket_counts.assign(kBuckets.size(), 0);
  for (size_t i = 0; i < kBuckets.size(); ++i)
    if (value <= kBuckets[i]) { ++h.bucket_counts[i]; break; }
  ++h.count;
  h.sum += value;
}

std::string Metrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& [name, f] : families_) {
    const char* type = f.type == Type::counter ? "counter" : f.type == Type::gauge ? "gauge" : "histogram";
    if (!f.help.empty()) out += "# HELP " + name + " " + f.help + "\n";
    out += "# TYPE " + name + " " + type + "\n";
    if (f.type == Type::histogram) {
      for (const auto& [labels, h] : f.histograms) {
        uint64_t cumulative = 0;
        for (size_t i = 0; i < kBuckets.size(); ++i) {
          cumulative += h.bucket_counts[i];
          out += series(name + "_bucket", labels, "le=\"" + format_number(kBuckets[i]) + "\"") + " " +
                 std::to_string(cumulative) + "\n";
        }
        out += series(name + "_bucket", labels, "le=\"+Inf\"") + " " + std::to_string(h.count) + "\n";
        out += series(name + "_sum", labels) + " " + format_number(h.sum) + "\n";
        out += series(name + "_count", labels) + " " + std::to_string(h.count) + "\n";
      }
    } else {
      if (f.values.empty()) out += name + " 0\n";
      for (const auto& [labels, v] : f.values) out += series(name, labels) + " " + format_number(v) + "\n";
    }
  }
  return out;
}

}  // namespace accel
