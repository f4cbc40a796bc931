// A small Prometheus registry: counters, gauges and histograms keyed by name and labels,
// rendered in the text exposition format. Thread-safe; one instance owned by main() and passed
// to whoever records (the server now, the cache and converters later).
#pragma once

#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace accel {

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

class Metrics {
 public:
  enum class Type { counter, gauge, histogram };

  Metrics();

  // Declares a family so it renders with HELP and TYPE lines (and a zero-valued unlabeled
  // series for counters and gauges without labels).
  void describe(std::string_view name, Type type, std::string_view help);

  void add(std::string_view name, Labels labels, double value = 1);  // counter or gauge
  void set(std::string_view name, Labels labels, double value);      // gauge
  void observe(std::string_view name, Labels labels, double value);  // histogram

  std::string render() const;

 private:
  struct Histogram {
    std::vector<uint64_t> bucket_counts;  // per upper bound in kBuckets, cumulative at render
    uint64_t count = 0;
    double sum = 0;
  };
  struct Family {
    Type type = Type::counter;
    std::string help;
    std::map<std::string, double> values;          // label text -> value
    std::map<std::string, Histogram> histograms;   // label text -> histogram
  };

  mutable std::mutex mutex_;
  std::map<std::string, Family, std::less<>> families_;
};

// Label text in exposition form, without braces: key="value",... (values escaped).
std::string format_labels(Labels labels);

}  // namespace accel
