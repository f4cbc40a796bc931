#include "cache/lmdb_index.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "cache/cache.hpp"

namespace accel::cache::lmdb {

namespace {

MDB_val as_val(std::string_view bytes) { return MDB_val{bytes.size(), const_cast<char*>(bytes.data())}; }

std::string_view as_view(const MDB_val& val) { return {static_cast<const char*>(val.mv_data), val.mv_size}; }

// Turns an LMDB return code into MapFull (which write() recovers from) or a CacheError.
void check(int rc, const char* what) {
  if (rc == MDB_SUCCESS) return;
  if (rc == MDB_MAP_FULL) throw MapFull();
  throw CacheError(std::string("LMDB ") + what + ": " + mdb_strerror(rc));
}

// A cursor, closed on destruction (before its transaction ends).
class Cursor {
 public:
  Cursor(MDB_txn* txn, MDB_dbi db) { check(mdb_cursor_open(txn, db, &cursor_), "cursor"); }
  ~Cursor() { mdb_cursor_close(cursor_); }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;

  // False at the end (MDB_NOTFOUND).
  bool move(MDB_val& key, MDB_val& value, MDB_cursor_op op) {
    int rc = mdb_cursor_get(cursor_, &key, &value, op);
    if (rc == MDB_NOTFOUND) return false;
    check(rc, "cursor read");
    return true;
  }

 private:
  MDB_cursor* cursor_ = nullptr;
};

}  // namespace

// --- Txn --------------------------------------------------------------------------------------

Txn::Txn(MDB_env* env, bool write) { check(mdb_txn_begin(env, nullptr, write ? 0 : MDB_RDONLY, &txn_), "begin"); }

Txn::~Txn() {
  if (txn_) mdb_txn_abort(txn_);
}

void Txn::commit() {
  MDB_txn* txn = std::exchange(txn_, nullptr);  // freed by LMDB whether or not it succeeds
  check(mdb_txn_commit(txn), "commit");
}

std::optional<std::string_view> Txn::get(MDB_dbi db, std::string_view key) {
  MDB_val k = as_val(key), v{};
  int rc = mdb_get(txn_, db, &k, &v);
  if (rc == MDB_NOTFOUND) return std::nullopt;
  check(rc, "get");
  return as_view(v);
}

void Txn::put(MDB_dbi db, std::string_view key, std::string_view value) {
  MDB_val k = as_val(key), v = as_val(value);
  check(mdb_put(txn_, db, &k, &v, 0), "put");
}

bool Txn::del(MDB_dbi db, std::string_view key) {
  MDB_val k = as_val(key);
  int rc = mdb_del(txn_, db, &k, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  check(rc, "delete");
  return true;
}

bool Txn::del(MDB_dbi db, std::string_view key, std::string_view value) {
  MDB_val k = as_val(key), v = as_val(value);
  int rc = mdb_del(txn_, db, &k, &v);
  if (rc == MDB_NOTFOUND) return false;
  check(rc, "delete");
  return true;
}

MDB_dbi Txn::open_db(const char* name, unsigned flags) {
  MDB_dbi db = 0;
  check(mdb_dbi_open(txn_, name, flags | MDB_CREATE, &db), name);
  return db;
}

void Txn::clear(MDB_dbi db) { check(mdb_drop(txn_, db, 0), "drop"); }

void Txn::scan(MDB_dbi db, std::string_view prefix, const Visitor& visit) {
  Cursor cursor(txn_, db);
  MDB_val k = as_val(prefix), v{};
  bool found = prefix.empty() ? cursor.move(k, v, MDB_FIRST) : cursor.move(k, v, MDB_SET_RANGE);
  for (; found; found = cursor.move(k, v, MDB_NEXT)) {
    std::string_view key = as_view(k);
    if (key.substr(0, prefix.size()) != prefix) return;
    if (!visit(key, as_view(v))) return;
  }
}

void Txn::scan_duplicates(MDB_dbi db, std::string_view key, const Visitor& visit) {
  Cursor cursor(txn_, db);
  MDB_val k = as_val(key), v{};
  for (bool found = cursor.move(k, v, MDB_SET_KEY); found; found = cursor.move(k, v, MDB_NEXT_DUP))
    if (!visit(key, as_view(v))) return;
}

// --- Index ------------------------------------------------------------------------------------

Index::Index(const std::string& path, uint64_t map_size, unsigned max_dbs) : path_(path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
    throw CacheError("cannot create " + path + ": " + std::strerror(errno));
  check(mdb_env_create(&env_), "create");
  try {
    check(mdb_env_set_mapsize(env_, map_size), "set map size");
    check(mdb_env_set_maxdbs(env_, max_dbs), "set max dbs");
    check(mdb_env_set_maxreaders(env_, 512), "set max readers");
    check(mdb_env_open(env_, path.c_str(), MDB_NOTLS, 0644), ("open " + path).c_str());
    int stale = 0;
    check(mdb_reader_check(env_, &stale), "reader check");  // slots of killed processes
  } catch (...) {
    mdb_env_close(env_);
    throw;
  }
}

Index::~Index() { mdb_env_close(env_); }

MDB_dbi Index::open_db(const char* name, unsigned flags) {
  return write([&](Txn& txn) { return txn.open_db(name, flags); });
}

uint64_t Index::map_size() const {
  MDB_envinfo info{};
  mdb_env_info(env_, &info);
  return info.me_mapsize;
}

void Index::double_map_size() {
  std::unique_lock no_transactions(resize_mutex_);
  check(mdb_env_set_mapsize(env_, map_size() * 2), "grow map");
}

void Index::throw_map_full() const {
  throw CacheError("LMDB map of " + path_ + " is full at " + std::to_string(map_size()) +
                   " bytes even after doubling; raise CacheLimits::map_size");
}

}  // namespace accel::cache::lmdb
