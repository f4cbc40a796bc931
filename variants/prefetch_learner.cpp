#include "variants/prefetch_learner.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

namespace accel {

const char* state_name(LearnedImage::State state) {
  switch (state) {
    case LearnedImage::State::learning: return "learning";
    case LearnedImage::State::learned: return "learned";
    case LearnedImage::State::optimizing: return "optimizing";
    case LearnedImage::State::optimized: return "optimized";
    case LearnedImage::State::configured: return "configured";
  }
  return "?";
}

std::vector<std::string> PrefetchLearner::agreed(const std::vector<const Startup*>& startups, int needed,
                                                 size_t& agreeing) {
  agreeing = 0;
  std::map<std::string, int> votes;
  for (const auto* s : startups) {
    std::set<std::string> once(s->files.begin(), s->files.end());
    for (const auto& f : once) ++votes[f];
  }
  std::set<std::string> chosen;
  for (const auto& [f, n] : votes)
    if (n >= std::max(needed, 1)) chosen.insert(f);
  if (chosen.empty()) return {};
  // Each start-up ranks the chosen files it read in its own first-read order.
  std::map<std::string, std::pair<double, int>> ranks;  // file -> (sum of ranks, count)
  for (const auto* s : startups) {
    int rank = 0;
    bool any = false;
    std::set<std::string> once;
    for (const auto& f : s->files) {
      if (!chosen.count(f) || !once.insert(f).second) continue;
      auto& r = ranks[f];
      r.first += rank++;
      r.second += 1;
      any = true;
    }
    if (any) ++agreeing;
  }
  std::vector<std::pair<double, std::string>> order;
  for (const auto& [f, r] : ranks) order.emplace_back(r.first / r.second, f);
  std::sort(order.begin(), order.end());
  std::vector<std::string> out;
  for (auto& [rank, f] : order) out.push_back(std::move(f));
  return out;
}

bool PrefetchLearner::add(const Startup& startup, int64_t now_ms) {
  auto& image = images_[startup.image];
  image.updated_ms = now_ms;
  if (image.state != LearnedImage::State::learning) return false;
  image.startups[startup.client] = startup;
  if (image.startups.size() > limits_.startups_per_image) {
    auto oldest = std::min_element(image.startups.begin(), image.startups.end(), [](const auto& a, const auto& b) {
      return a.second.started_ms < b.second.started_ms;
    });
    image.startups.erase(oldest);
  }
  std::vector<const Startup*> all;
  for (const auto& [client, s] : image.startups) all.push_back(&s);
  size_t agreeing = 0;
  image.files = agreed(all, limits_.startups, agreeing);
  image.agreeing = agreeing;
  bool learned = !image.files.empty() && static_cast<int>(image.startups.size()) >= limits_.startups;
  if (learned) image.state = LearnedImage::State::learned;
  bound();
  return learned && images_.count(startup.image);
}

const LearnedImage* PrefetchLearner::find(const std::string& image) const {
  auto it = images_.find(image);
  return it == images_.end() ? nullptr : &it->second;
}

LearnedImage* PrefetchLearner::find(const std::string& image) {
  auto it = images_.find(image);
  return it == images_.end() ? nullptr : &it->second;
}

void PrefetchLearner::put(const std::string& image, LearnedImage record) {
  images_[image] = std::move(record);
  bound();
}

std::vector<std::string> PrefetchLearner::take_dropped() {
  std::vector<std::string> out;
  out.swap(dropped_);
  return out;
}

void PrefetchLearner::bound() {
  while (images_.size() > limits_.images) {
    auto oldest = std::min_element(images_.begin(), images_.end(), [](const auto& a, const auto& b) {
      return a.second.updated_ms < b.second.updated_ms;
    });
    dropped_.push_back(oldest->first);
    images_.erase(oldest);
  }
}

std::string PrefetchLearner::encode(const LearnedImage& record) {
  const bool optimized = record.state == LearnedImage::State::optimized;
  return nlohmann::json{{"state", optimized ? "optimized" : "learned"},
                        {"files", record.files},
                        {"agreeing", record.agreeing},
                        {"variant", record.variant},
                        {"updated_ms", record.updated_ms}}
      .dump();
}

std::optional<LearnedImage> PrefetchLearner::decode(std::string_view value) {
  try {
    auto j = nlohmann::json::parse(value);
    LearnedImage record;
    const std::string state = j.at("state").get<std::string>();
    if (state == "optimized") record.state = LearnedImage::State::optimized;
    else if (state == "learned") record.state = LearnedImage::State::learned;
    else return std::nullopt;
    record.files = j.at("files").get<std::vector<std::string>>();
    record.agreeing = j.value("agreeing", size_t{0});
    record.variant = j.value("variant", "");
    record.updated_ms = j.value("updated_ms", int64_t{0});
    if (record.files.empty()) return std::nullopt;
    return record;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace accel
