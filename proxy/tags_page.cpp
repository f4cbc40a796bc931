#include "proxy/tags_page.hpp"

#include <algorithm>
#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <nlohmann/json.hpp>

namespace accel {

std::string relative_link(std::string_view link) {
  size_t open = link.find('<');
  size_t close = link.find('>', open == std::string_view::npos ? 0 : open);
  if (open == std::string_view::npos || close == std::string_view::npos) return std::string(link);
  std::string_view url = link.substr(open + 1, close - open - 1);
  size_t scheme = url.find("://");
  if (scheme != std::string_view::npos) {
    size_t path = url.find('/', scheme + 3);
    url = path == std::string_view::npos ? std::string_view("/") : url.substr(path);
  }
  return std::string(link.substr(0, open + 1)) + std::string(url) + std::string(link.substr(close));
}

std::optional<TagsPage> paginate_tags(std::string_view upstream_body, std::string_view repository,
                                      std::optional<uint64_t> n, std::optional<std::string> last,
                                      std::string_view upstream_link) {
  auto doc = nlohmann::json::parse(upstream_body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return std::nullopt;
  auto it = doc.find("tags");
  if (it == doc.end() || !(it->is_array() || it->is_null())) return std::nullopt;

  std::vector<std::string> tags;
  if (it->is_array())
    for (const auto& t : *it) {
      if (!t.is_string()) return std::nullopt;
      tags.push_back(t.get<std::string>());
    }

  TagsPage page;
  if (!n && !last) {
    page.body = std::string(upstream_body);
    if (!upstream_link.empty()) page.link = relative_link(upstream_link);
    return page;
  }
  std::sort(tags.begin(), tags.end());
  if (last) tags.erase(tags.begin(), std::upper_bound(tags.begin(), tags.end(), *last));
  bool cut = n && tags.size() > *n;
  if (cut) tags.resize(*n);

  auto name = doc.find("name");
  nlohmann::json out = {{"name", name != doc.end() && name->is_string() ? name->get<std::string>() : std::string(repository)},
                        {"tags", tags}};
  page.body = out.dump();
  if (cut && !tags.empty()) {
    namespace u = boost::urls;
    page.link = "</v2/" + std::string(repository) + "/tags/list?n=" + std::to_string(*n) +
                "&last=" + u::encode(tags.back(), u::unreserved_chars) + ">; rel=\"next\"";
  } else if (!cut && !upstream_link.empty()) {
    page.link = relative_link(upstream_link);  // the upstream paginates: follow its cursor
  }
  return page;
}

}  // namespace accel
