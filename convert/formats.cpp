#include "convert/formats.hpp"

#include "convert/estargz.hpp"
#include "convert/nydus.hpp"

namespace accel::convert {

std::vector<const LayerFormat*> all_formats() {
  static const EstargzFormat estargz;
  static const NydusFormat nydus;
  return {&estargz, &nydus};
}

const LayerFormat* find_format(std::string_view name) {
  for (const auto* f : all_formats())
    if (f->name() == name) return f;
  return nullptr;
}

}  // namespace accel::convert
