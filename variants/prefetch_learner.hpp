// Learned prefetch, part two: when enough start-ups agree on what an image reads first (plain
// logic, no sockets; unit-tested). Each client (address and credential) has one vote per image,
// its latest start-up, so one crash-looping container cannot decide alone. The learned list is
// the files read by at least `startups` of them, in the order they were first read (their mean
// rank among those files; docs/DECISIONS.md, "Learned prefetch"). The learner also keeps each
// image's state through the optimization that follows, and its persistent form.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "variants/startup_recorder.hpp"

namespace accel {

struct LearnedImage {
  enum class State {
    learning,    // start-ups recorded, not enough agree yet
    learned,     // a list agreed on; the optimized variant is to be converted
    optimizing,  // its conversion is under way
    optimized,   // the optimized variant exists: tags, the header and Accept resolve to it
    configured,  // the config's prefetch list for the repository wins: nothing to do
  };
  State state = State::learning;
  std::vector<std::string> files;  // the learned list (learning: what agrees so far)
  size_t agreeing = 0;             // start-ups it was learned from (that read any of its files)
  std::string variant;             // optimized: the variant's manifest digest
  int64_t updated_ms = 0;
  std::map<std::string, Startup> startups;  // by client: the latest of each (not persisted)
};

const char* state_name(LearnedImage::State state);

struct LearnerLimits {
  int startups = 2;                 // agreeing start-ups needed
  size_t images = 4096;             // images tracked; the least recently updated go first,
                                    // those still learning before the others
  size_t startups_per_image = 16;   // clients' votes kept per image; the oldest go first
  size_t files = 1 << 20;           // file names kept in all votes (about 100 MB at most)
};

class PrefetchLearner {
 public:
  explicit PrefetchLearner(LearnerLimits limits) : limits_(limits) {}

  // Adds a start-up; true when its image has just become `learned`. Start-ups of an image
  // past `learning` change nothing.
  bool add(const Startup& startup, int64_t now_ms);

  // The list `startups` agree on: files read by at least `needed` of them, ordered by their
  // mean rank among those files (then by path). Sets `agreeing`.
  static std::vector<std::string> agreed(const std::vector<const Startup*>& startups, int needed, size_t& agreeing);

  const LearnedImage* find(const std::string& image) const;
  LearnedImage* find(const std::string& image);
  const std::map<std::string, LearnedImage>& images() const { return images_; }
  // Puts (or replaces) an image's record, e.g. restored from the cache at start.
  void put(const std::string& image, LearnedImage record);
  // Images dropped to stay within the limit since the last call (their stored records go too).
  std::vector<std::string> take_dropped();

  // The persistent form of a learned, optimizing or optimized record (JSON), and back;
  // nullopt for a value that does not parse. An `optimizing` record comes back `learned`: the
  // conversion did not survive the restart.
  static std::string encode(const LearnedImage& record);
  static std::optional<LearnedImage> decode(std::string_view value);

 private:
  // Drops images (learning ones first, least recently updated first) until within the limits,
  // never `keep`.
  void bound(const std::string& keep = {});
  static size_t files_in(const LearnedImage& image);

  LearnerLimits limits_;
  size_t files_ = 0;  // file names in all votes
  std::map<std::string, LearnedImage> images_;
  std::vector<std::string> dropped_;
};

}  // namespace accel
