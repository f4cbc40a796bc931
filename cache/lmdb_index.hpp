// A thin RAII layer over LMDB: one environment, named databases, read and write transactions.
// It knows nothing of what the keys and values mean (that is cache.cpp and records.hpp).
//
// Threads: the environment is opened with MDB_NOTLS, so read transactions may run on any
// thread, concurrently. Writes are serialized by a mutex (LMDB allows one writer at a time
// anyway; the mutex keeps waiting threads out of LMDB's lock file). The map grows by doubling
// when a write finds it full; growing needs every transaction of the process closed, so each
// transaction holds a shared lock that growing takes exclusively.
#pragma once

#include <lmdb.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace accel::cache::lmdb {

// One transaction; aborted on destruction unless committed. Use it on one thread at a time.
class Txn {
 public:
  Txn(MDB_env* env, bool write);
  ~Txn();
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

  void commit();

  // The value under `key`, valid until the transaction ends or writes again.
  std::optional<std::string_view> get(MDB_dbi db, std::string_view key);
  void put(MDB_dbi db, std::string_view key, std::string_view value);
  // Deletes `key` (every duplicate of it in a MDB_DUPSORT database). False if absent.
  bool del(MDB_dbi db, std::string_view key);
  // Deletes one duplicate (`key`, `value`) of a MDB_DUPSORT database. False if absent.
  bool del(MDB_dbi db, std::string_view key, std::string_view value);
  // Opens (creating) a named database; the handle stays valid once this transaction commits.
  MDB_dbi open_db(const char* name, unsigned flags);
  // Empties a database.
  void clear(MDB_dbi db);

  // Calls `visit(key, value)` for every entry whose key starts with `prefix`, in key order,
  // until it returns false. Don't write to `db` from inside `visit`.
  using Visitor = std::function<bool(std::string_view key, std::string_view value)>;
  void scan(MDB_dbi db, std::string_view prefix, const Visitor& visit);
  // Calls `visit(key, value)` for every duplicate value stored under `key` (MDB_DUPSORT).
  void scan_duplicates(MDB_dbi db, std::string_view key, const Visitor& visit);

 private:
  MDB_txn* txn_ = nullptr;
};

// Thrown by Txn when the map is full; Index::write catches it to grow the map.
struct MapFull : std::exception {
  const char* what() const noexcept override { return "LMDB map full"; }
};

class Index {
 public:
  // Opens (creating) the environment in directory `path`.
  Index(const std::string& path, uint64_t map_size, unsigned max_dbs);
  ~Index();
  Index(const Index&) = delete;
  Index& operator=(const Index&) = delete;

  // Opens (creating) a named database. Call before any concurrent use.
  MDB_dbi open_db(const char* name, unsigned flags = 0);

  // Runs `work(txn)` in a read transaction.
  template <class Work>
  auto read(Work&& work) {
    std::shared_lock no_resize(resize_mutex_);
    Txn txn(env_, false);
    return work(txn);
  }

  // Runs `work(txn)` in a write transaction and commits it. If the map is full, doubles it
  // and runs `work` once more (so `work` must only act through `txn`, or be repeatable);
  // throws CacheError if it is still full.
  template <class Work>
  auto write(Work&& work) {
    std::lock_guard one_writer(writer_mutex_);
    for (int attempt = 0;; ++attempt) {
      try {
        std::shared_lock no_resize(resize_mutex_);
        Txn txn(env_, true);
        if constexpr (std::is_void_v<decltype(work(txn))>) {
          work(txn);
          txn.commit();
          return;
        } else {
          auto result = work(txn);
          txn.commit();
          return result;
        }
      } catch (const MapFull&) {
        if (attempt > 0) throw_map_full();
        double_map_size();
      }
    }
  }

  uint64_t map_size() const;

 private:
  void double_map_size();
  [[noreturn]] void throw_map_full() const;

  MDB_env* env_ = nullptr;
  std::string path_;
  std::mutex writer_mutex_;
  std::shared_mutex resize_mutex_;
};

}  // namespace accel::cache::lmdb
