#pragma once
// The few most recently used results of a costly host-side build (attention work tables, cuDNN
// graphs, LRSA gather tables). Every layer of a step asks for the same one or two keys, so a
// short list searched front to back is all the lookup needs.
#include <cstddef>
#include <list>
#include <utility>

namespace lrsa::cuda {

// The value stored under `key` (moved to the front), else build()'s result stored at the front;
// beyond `capacity` entries the least recently used one is dropped. A returned reference stays
// valid until its entry is dropped. If build() throws, the cache is unchanged.
template <typename Key, typename Value, typename Build>
const Value& recent(std::list<std::pair<Key, Value>>& cache, size_t capacity, Key key, Build&& build) {
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (it->first == key) {
      cache.splice(cache.begin(), cache, it);
      return cache.front().second;
    }
  }
  cache.emplace_front(std::move(key), build());
  if (cache.size() > capacity) cache.pop_back();
  return cache.front().second;
}

}  // namespace lrsa::cuda
