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

size_t PrefetchLearner::files_in(const LearnedImage& image) {
  size_t n = 0;
  for (const auto& [client, s] : image.startups) n += s.files.size();
  return n;
}

bool PrefetchLearner::add(const Startup& startup, int64_t now_ms) {
  auto& image = images_[startup.image];
  image.updated_ms = now_ms;
  if (image.state != LearnedImage::State::learning) return false;
  files_ -= files_in(image);
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
  const bool learned = !image.files.empty() && static_cast<int>(image.startups.size()) >= limits_.startups;
  if (learned) image.state = LearnedImage::State::learned;
  files_ += files_in(image);
  bound(startup.image);
  return learned;
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
  if (auto old = images_.find(image); old != images_.end()) files_ -= files_in(old->second);
  files_ += files_in(record);
  images_[image] = std::move(record);
  bound(image);
}

std::vector<std::string> PrefetchLearner::take_dropped() {
  std::vector<std::string> out;
  out.swap(dropped_);
  return out;
}

void PrefetchLearner::bound(const std::string& keep) {
  while (images_.size() > limits_.images || files_ > limits_.files) {
    auto victim = images_.end();
    for (auto it = images_.begin(); it != images_.end(); ++it) {
      if (it->first == keep) continue;
      const bool learning = it->second.state == LearnedImage::State::learning;
      if (victim == images_.end()) {
        victim = it;
        continue;
      }
      const bool victim_learning = victim->second.state == LearnedImage::State::learning;
      if (learning != victim_learning ? learning : it->second.updated_ms < victim->second.updated_ms) victim = it;
    }
    if (victim == images_.end()) return;
    files_ -= files_in(victim->second);
    dropped_.push_back(victim->first);
    images_.erase(victim);
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
