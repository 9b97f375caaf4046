// save() / load(): a run saved after k steps and resumed in a fresh optimizer over a copy of the
// weights continues bitwise identically to the uninterrupted run; a checkpoint of another
// parameter count or element type is rejected with invalid_argument and changes nothing.
// Format v2 (issue 18): the layout byte by byte, CRC-32C, every class of corrupted checkpoint
// rejected with nothing changed and bounded allocation (a counting operator new), and exact
// resume after a skipped step, a refresh, a rollback load() and with preconditioned SAM.
#include <doctest/doctest.h>

#include <atomic>
#include <bit>
#include <cstdlib>
#include <limits>
#include <new>
#include <sstream>

#include <flatmin/mask/dynamic.hpp>
#include <flatmin/mask/fisher.hpp>
#include <flatmin/mask/random.hpp>
#include <flatmin/perturb/preconditioned.hpp>

#include "support/backends.hpp"
#include "support/problems.hpp"

using namespace flatmin_test;

namespace {
const layout_spec ckpt_layout = {{"w", {40, 3}}, {"b", {40}, {.weight_decay = false, .adaptive = false}},
                                 {"frozen", {5}, {.perturb = false}}};

template <class T, class MakeOpt>
void resumes_exactly(MakeOpt make) {
  const int k = 4, more = 6;
  model<T> a(ckpt_layout);
  a.set_weights(random_vec(a.numel, 31));
  auto qa = quadratic::random(a.numel, 31, 0.5, 2.0, 0.2);
  auto oa = make(a);
  for (int s = 0; s < k; ++s) oa.step(qa.objective(a));

  std::stringstream ckpt;
  oa.save(ckpt);

  model<T> b(ckpt_layout);
  b.set_raw_weights(a.raw_weights());
  auto qb = qa;  // the same data stream from here on
  auto ob = make(b);
  ob.load(ckpt);
  CHECK(ob.steps() == static_cast<std::size_t>(k));

  for (int s = 0; s < more; ++s) {
    const auto ra = oa.step(qa.objective(a));
    const auto rb = ob.step(qb.objective(b));
    CHECK(rb.step == ra.step);
    CHECK(bitwise_equal(b.raw_weights(), a.raw_weights()));
    CHECK(bitwise_equal(rb.grad_norm, ra.grad_norm));
  }

  // without the checkpoint the resumed run differs (the state matters): the test can fail
  model<T> c(ckpt_layout);
  auto qc = quadratic::random(c.numel, 31, 0.5, 2.0, 0.2);
  c.set_weights(random_vec(c.numel, 31));
  auto oc = make(c);
  for (int s = 0; s < k; ++s) oc.step(qc.objective(c));
  model<T> d(ckpt_layout);
  d.set_raw_weights(c.raw_weights());
  auto qd = qc;
  auto od = make(d);  // fresh state, no load
  oc.step(qc.objective(c));
  od.step(qd.objective(d));
  CHECK_FALSE(bitwise_equal(d.raw_weights(), c.raw_weights()));
}
}  // namespace

TEST_CASE_TEMPLATE("checkpoint: save after k steps, load into a fresh optimizer, continue bitwise identically", T,
                   float, double) {
  SUBCASE("sam + sgd momentum") {
    resumes_exactly<T>([](model<T>& m) { return flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}); });
  }
  SUBCASE("asam + adam") {
    resumes_exactly<T>([](model<T>& m) { return flatmin::asam(m.params, flatmin::base::adam{.lr = 0.01}); });
  }
  SUBCASE("adamw") {
    resumes_exactly<T>([](model<T>& m) { return flatmin::adamw(m.params, {.lr = 0.01}); });
  }
}

TEST_CASE("checkpoint: another parameter count or element type is rejected, the optimizer unchanged") {
  model<float> a(ckpt_layout);
  a.set_weights(random_vec(a.numel, 32));
  auto qa = quadratic::random(a.numel, 32);
  auto oa = flatmin::sam(a.params, flatmin::base::adam{.lr = 0.01});
  for (int s = 0; s < 3; ++s) oa.step(qa.objective(a));
  std::stringstream float_ckpt;
  oa.save(float_ckpt);

  // a reference run, and the one that sees the bad loads: both continue identically
  auto run_pair = [&](auto& victim_opt, model<float>& victim, auto& ref_opt, model<float>& refm) {
    auto q1 = quadratic::random(victim.numel, 33), q2 = q1;
    for (int s = 0; s < 3; ++s) {
      victim_opt.step(q1.objective(victim));
      ref_opt.step(q2.objective(refm));
      CHECK(bitwise_equal(victim.raw_weights(), refm.raw_weights()));
    }
  };

  // another parameter count
  layout_spec other = ckpt_layout;
  other[0].shape = {41, 3};
  model<float> o(other);
  auto oo = flatmin::sam(o.params, flatmin::base::adam{.lr = 0.01});
  std::stringstream other_ckpt;
  oo.save(other_ckpt);

  // another element type
  model<double> dm(ckpt_layout);
  auto od = flatmin::sam(dm.params, flatmin::base::adam{.lr = 0.01});
  std::stringstream double_ckpt;
  od.save(double_ckpt);

  model<float> v(ckpt_layout), r(ckpt_layout);
  v.set_raw_weights(a.raw_weights());
  r.set_raw_weights(a.raw_weights());
  auto ov = flatmin::sam(v.params, flatmin::base::adam{.lr = 0.01});
  auto orf = flatmin::sam(r.params, flatmin::base::adam{.lr = 0.01});
  float_ckpt.seekg(0);
  ov.load(float_ckpt);
  float_ckpt.seekg(0);
  orf.load(float_ckpt);

  CHECK_THROWS_AS(ov.load(other_ckpt), std::invalid_argument);
  CHECK_THROWS_AS(ov.load(double_ckpt), std::invalid_argument);
  std::stringstream garbage("this is not a checkpoint at all, just text");
  CHECK_THROWS_AS(ov.load(garbage), std::invalid_argument);
  std::stringstream truncated(float_ckpt.str().substr(0, float_ckpt.str().size() / 2));
  CHECK_THROWS_AS(ov.load(truncated), std::invalid_argument);
  // a checkpoint of another composition (SGD with momentum has other buffers)
  model<float> s(ckpt_layout);
  auto os = flatmin::sam(s.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  std::stringstream sgd_ckpt;
  os.save(sgd_ckpt);
  CHECK_THROWS_AS(ov.load(sgd_ckpt), std::invalid_argument);

  // SGD state saved without momentum, loaded where momentum is on (and the reverse)
  model<float> p0(ckpt_layout), p1(ckpt_layout);
  auto no_mom = flatmin::sam(p0.params, flatmin::base::sgd{.lr = 0.1});
  auto mom = flatmin::sam(p1.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  std::stringstream no_mom_ckpt, mom_ckpt;
  no_mom.save(no_mom_ckpt);
  mom.save(mom_ckpt);
  CHECK_THROWS_AS(mom.load(no_mom_ckpt), std::invalid_argument);
  CHECK_THROWS_AS(no_mom.load(mom_ckpt), std::invalid_argument);

  CHECK(ov.steps() == 3);
  CHECK(bitwise_equal(v.raw_weights(), r.raw_weights()));
  run_pair(ov, v, orf, r);
}

TEST_CASE("checkpoint: save() and load() between ascend() and descend() are usage errors") {
  model<float> a(ckpt_layout);
  a.set_weights(random_vec(a.numel, 34));
  auto q = quadratic::random(a.numel, 34);
  auto opt = flatmin::sam(a.params, flatmin::base::sgd{.lr = 0.1});
  q.eval(a);
  opt.ascend();
  std::stringstream ss;
  CHECK_THROWS_AS(opt.save(ss), flatmin::usage_error);
  CHECK_THROWS_AS(opt.load(ss), flatmin::usage_error);
  opt.cancel();
}

// ---------------------------------------------------------------------------------------------
// Format v2 (optimizer/checkpoint.hpp): the layout byte by byte, CRC-32C, corrupted checkpoints
// rejected with nothing changed, bounded allocation, and exact resume in the hard cases.
// ---------------------------------------------------------------------------------------------

// Counting allocator: every operator new of the program goes through here; while `counting` is
// set the bytes are added up (load()'s host temporaries are std::vector / std::string).
namespace {
std::atomic<bool> counting{false};
std::atomic<std::size_t> counted_bytes{0};
// Out of line, so that GCC does not pair an inlined free() with operator new (a false
// -Wmismatched-new-delete: both sides are replaced here).
[[gnu::noinline]] void release(void* p) noexcept { std::free(p); }
}  // namespace
void* operator new(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) counted_bytes.fetch_add(n, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }

namespace {

// An independent CRC-32C: bit by bit from the reflected Castagnoli polynomial (RFC 3720 B.4),
// no table, to check the library's table-driven one.
std::uint32_t crc32c_bitwise(const std::string& s, std::size_t n) {
  std::uint32_t c = 0xffffffffu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= static_cast<unsigned char>(s[i]);
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
  }
  return ~c;
}

std::uint64_t get_le(const std::string& b, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(b.at(at + i))) << (8 * i);
  return v;
}
void put_le(std::string& b, std::size_t at, int bytes, std::uint64_t v) {
  for (int i = 0; i < bytes; ++i) b.at(at + i) = static_cast<char>((v >> (8 * i)) & 0xff);
}

// Where each field of a v2 checkpoint lies, parsed from the format table of checkpoint.hpp.
struct ckpt_map {
  struct tensor {
    std::string name;
    std::size_t name_len_at, size_at, flags_at;
  };
  struct entry {
    std::string name;
    std::size_t name_len_at, type_at, count_at, data_at;
    std::uint64_t count;
    unsigned size;
  };
  std::string identity;
  std::size_t identity_len_at = 0, numel_at = 0, tensor_count_at = 0, steps_at = 0, entry_count_at = 0, crc_at = 0;
  std::vector<tensor> tensors;
  std::vector<entry> entries;
  const entry& at(const std::string& n) const {
    for (const auto& e : entries)
      if (e.name == n) return e;
    throw std::runtime_error("no entry " + n);
  }
};

ckpt_map parse(const std::string& b) {
  ckpt_map m;
  std::size_t p = 16;
  auto str = [&](std::size_t& len_at) {
    len_at = p;
    const auto n = get_le(b, p, 4);
    p += 4;
    std::string s = b.substr(p, n);
    p += n;
    return s;
  };
  m.identity = str(m.identity_len_at);
  m.numel_at = p;
  p += 8;
  m.tensor_count_at = p;
  const auto k = get_le(b, p, 4);
  p += 4;
  for (std::uint64_t t = 0; t < k; ++t) {
    ckpt_map::tensor e;
    e.name = str(e.name_len_at);
    e.size_at = p;
    e.flags_at = p + 8;
    p += 12;
    m.tensors.push_back(e);
  }
  m.steps_at = p;
  p += 8;
  m.entry_count_at = p;
  const auto n = get_le(b, p, 4);
  p += 4;
  for (std::uint64_t i = 0; i < n; ++i) {
    ckpt_map::entry e;
    e.name = str(e.name_len_at);
    e.type_at = p;
    e.size = static_cast<unsigned char>(b.at(p + 1));
    e.count_at = p + 4;
    e.count = get_le(b, p + 4, 8);
    e.data_at = p + 12;
    p = e.data_at + e.count * e.size;
    m.entries.push_back(e);
  }
  m.crc_at = p;
  return m;
}

// Recomputes the trailing CRC, so that a corruption reaches the checks behind it.
std::string resealed(std::string b) {
  const std::size_t crc_at = b.size() - 4;
  put_le(b, crc_at, 4, crc32c_bitwise(b, crc_at));
  return b;
}

const layout_spec mask_layout = {{"w", {40, 3}},
                                 {"b", {40}, {.weight_decay = false, .adaptive = false}},
                                 {"frozen", {5}, {.perturb = false}},
                                 {"norm", {7}, {.mask_eligible = false}}};

template <class B, class T = float>
using sam_adamw_t = flatmin::sharpness_aware<T, B, flatmin::perturb::l2, flatmin::mask::dense, flatmin::base::adamw>;
template <class B, class T = float>
using fisher_t = flatmin::sharpness_aware<T, B, flatmin::perturb::l2, flatmin::mask::fisher, flatmin::base::adamw>;
template <class B, class T = float>
using dynamic_t = flatmin::sharpness_aware<T, B, flatmin::perturb::l2, flatmin::mask::dynamic, flatmin::base::sgd>;
template <class B, class T = float>
using random_t = flatmin::sharpness_aware<T, B, flatmin::perturb::l2, flatmin::mask::random, flatmin::base::sgd>;
template <class B, class T = float>
using precond_t =
    flatmin::sharpness_aware<T, B, flatmin::perturb::preconditioned, flatmin::mask::dense, flatmin::base::adamw>;

const flatmin::mask::fisher fisher_blocks{.keep = 0.25, .refresh_every = 3, .block = 4};
const flatmin::mask::dynamic dynamic_blocks{.sparsity = 0.6, .refresh_every = 2, .block = 8, .seed = 3};

template <class Opt, class T>
void train(Opt& opt, model<T>& m, quadratic& q, int steps) {
  for (int s = 0; s < steps; ++s) opt.step(q.objective(m));
}

template <class Opt>
std::string saved(Opt& opt) {
  std::stringstream ss;
  opt.save(ss);
  return ss.str();
}

// load(blob) throws invalid_argument mentioning `expect`; the optimizer's state (its own save())
// and the weights are as they were.
template <class Opt, class T>
void rejected(Opt& victim, model<T>& vm, const std::string& blob, const char* expect) {
  CAPTURE(expect);
  const std::string before = saved(victim);
  const auto w = vm.raw_weights();
  std::stringstream in(blob);
  CHECK_THROWS_WITH_AS(victim.load(in), doctest::Contains(expect), std::invalid_argument);
  CHECK(saved(victim) == before);
  CHECK(bitwise_equal(vm.raw_weights(), w));
  CHECK_FALSE(victim.ascended());
}

// Bytes operator new handed out during victim.load(blob) (which must throw invalid_argument).
template <class Opt>
std::size_t bytes_during_failed_load(Opt& victim, const std::string& blob) {
  std::stringstream in(blob);
  counted_bytes = 0;
  counting = true;
  bool threw = false;
  try {
    victim.load(in);
  } catch (const std::invalid_argument&) {
    threw = true;
  } catch (...) {
  }
  counting = false;
  CHECK(threw);
  return counted_bytes;
}

}  // namespace

TEST_CASE("checkpoint: CRC-32C gives the standard check value") {
  // The CRC catalogue's check value of CRC-32C (iSCSI) over the ASCII digits "123456789".
  CHECK(flatmin::checkpoint::crc32c::of("123456789", 9) == 0xE3069283u);
  const std::string text = "sharpness-aware minimization";
  CHECK(flatmin::checkpoint::crc32c::of(text.data(), text.size()) == crc32c_bitwise(text, text.size()));
  flatmin::checkpoint::crc32c split;  // incremental updates give the same value
  split.update(text.data(), 5);
  split.update(text.data() + 5, text.size() - 5);
  CHECK(split.value() == crc32c_bitwise(text, text.size()));
}

TEST_CASE_TEMPLATE("checkpoint: the v2 layout, byte by byte", B, FLATMIN_TEST_BACKENDS) {
  model<float> m(mask_layout);
  m.set_weights(random_vec(m.numel, 40));
  auto q = quadratic::random(m.numel, 40);
  fisher_t<B> opt(m.params, {.base = flatmin::base::adamw{.lr = 0.01}, .mask = fisher_blocks});
  train(opt, m, q, 4);
  const std::string b = saved(opt);
  const auto map = parse(b);
  CHECK(b.substr(0, 8) == "FLATMIN2");
  CHECK(get_le(b, 8, 4) == 2);
  CHECK(b[12] == 'f');
  CHECK(b[13] == 4);
  CHECK(get_le(b, 14, 2) == 0);
  CHECK(map.identity == "sharpness_aware<l2, fisher(block=4, source=accumulated), adamw, standard, none>");
  CHECK(get_le(b, map.numel_at, 8) == 172);
  REQUIRE(map.tensors.size() == 4);
  const char* names[] = {"w", "b", "frozen", "norm"};
  const std::uint64_t sizes[] = {120, 40, 5, 7};
  for (std::size_t t = 0; t < 4; ++t) {
    CHECK(map.tensors[t].name == names[t]);
    CHECK(get_le(b, map.tensors[t].size_at, 8) == sizes[t]);
    CHECK(get_le(b, map.tensors[t].flags_at, 4) == m.params.tensors()[t].flags());
  }
  CHECK(get_le(b, map.steps_at, 8) == 4);
  std::vector<std::string> got;
  for (const auto& e : map.entries) got.push_back(e.name);
  CHECK(got == std::vector<std::string>{"exp_avg", "exp_avg_sq", "adam.beta2", "adam.eps", "fisher.bits", "fisher.acc",
                                        "fisher.keep", "fisher.restart", "fisher.examples_seen"});
  // 44 units of 4 (30 + 10 + 2 + 2): two words of bits, 44 sums
  CHECK(map.at("exp_avg").count == 172);
  CHECK(map.at("exp_avg").size == 4);
  CHECK(map.at("fisher.bits").count == 2);
  CHECK(map.at("fisher.acc").count == 44);
  CHECK(map.at("fisher.restart").count == 1);
  CHECK(map.at("fisher.restart").size == 1);
  double beta2 = 0;
  const std::uint64_t beta2_bits = get_le(b, map.at("adam.beta2").data_at, 8);
  std::memcpy(&beta2, &beta2_bits, 8);
  CHECK(beta2 == 0.999);
  CHECK(map.crc_at + 4 == b.size());
  CHECK(get_le(b, map.crc_at, 4) == crc32c_bitwise(b, map.crc_at));
}

TEST_CASE_TEMPLATE("checkpoint: corrupted checkpoints are rejected, the optimizer and weights unchanged", B,
                   FLATMIN_TEST_BACKENDS) {
  model<float> src_m(mask_layout), vm(mask_layout), rm(mask_layout);
  src_m.set_weights(random_vec(src_m.numel, 41));
  auto qs = quadratic::random(src_m.numel, 41);
  fisher_t<B> src(src_m.params, {.base = flatmin::base::adamw{.lr = 0.01}, .mask = fisher_blocks});
  train(src, src_m, qs, 5);  // steps 1 and 4 refresh: 10 of the 40 candidate blocks active
  const std::string good = saved(src);
  const auto map = parse(good);

  vm.set_weights(random_vec(vm.numel, 42));
  rm.set_weights(random_vec(rm.numel, 42));
  fisher_t<B> victim(vm.params, {.base = flatmin::base::adamw{.lr = 0.01}, .mask = fisher_blocks});
  fisher_t<B> ref(rm.params, {.base = flatmin::base::adamw{.lr = 0.01}, .mask = fisher_blocks});
  auto qv = quadratic::random(vm.numel, 43), qr = qv;
  train(victim, vm, qv, 2);
  train(ref, rm, qr, 2);
  const std::size_t bound = 2 * (victim.base_state_bytes() + victim.extra_state_bytes()) + (1u << 20);

  auto edit = [&](std::size_t at, int bytes, std::uint64_t v) {
    std::string b = good;
    put_le(b, at, bytes, v);
    return resealed(b);
  };
  auto set_bit = [&](std::string b, std::size_t unit) {
    const auto& e = map.at("fisher.bits");
    const std::size_t at = e.data_at + 4 * (unit / 32);
    put_le(b, at, 4, get_le(b, at, 4) | (1ull << (unit % 32)));
    return b;
  };
  auto put_f64 = [&](const char* entry, double x) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &x, 8);
    return edit(map.at(entry).data_at, 8, bits);
  };
  auto put_f32 = [&](std::size_t at, float x) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &x, 4);
    return edit(at, 4, bits);
  };

  SUBCASE("header") {
    std::string v1 = good;
    v1[7] = '1';
    rejected(victim, vm, resealed(v1), "version-1");
    std::string other = good;
    other[0] = 'X';
    rejected(victim, vm, resealed(other), "not a flatmin checkpoint");
    rejected(victim, vm, edit(8, 4, 3), "format version 3");
    rejected(victim, vm, edit(13, 1, 8), "element type differs: saved double");
    rejected(victim, vm, "", "truncated");
  }
  SUBCASE("parameter table") {
    std::string renamed = good;
    renamed[map.tensors[0].name_len_at + 4] = 'v';
    rejected(victim, vm, resealed(renamed), "tensor 0 'w': saved under the name 'v'");
    rejected(victim, vm, edit(map.tensors[0].size_at, 8, 121), "tensor 0 'w' has 120 entries, saved 121");
    rejected(victim, vm, edit(map.numel_at, 8, 173), "parameter count differs");
    rejected(victim, vm, edit(map.tensors[1].flags_at, 4, 0), "tensor_flags");
  }
  SUBCASE("sizes and types of state entries") {
    rejected(victim, vm, edit(map.at("exp_avg").count_at, 8, 173), "'exp_avg' has 172 entries here, saved 173");
    rejected(victim, vm, edit(map.at("fisher.bits").count_at, 8, 1), "'fisher.bits' has 2 entries here, saved 1");
    rejected(victim, vm, edit(map.at("fisher.acc").count_at, 8, 0), "'fisher.acc' has 44 entries here, saved 0");
    rejected(victim, vm, edit(map.at("exp_avg").type_at + 1, 1, 8), "element type differs");
    rejected(victim, vm, edit(map.at("fisher.keep").count_at, 8, 2), "not the expected scalar");
    std::string swapped = good;  // two entries' names exchanged
    swapped.replace(map.at("exp_avg").name_len_at + 4, 7, "exp_avX");
    rejected(victim, vm, resealed(swapped), "saved under the name 'exp_avX'");
  }
  SUBCASE("huge size and name fields: rejected before allocating, bounded memory") {
    const std::pair<std::string, const char*> cases[] = {
        {edit(map.identity_len_at, 4, 0xffffffffu), "bytes long, at most 4096"},
        {edit(map.tensors[2].name_len_at, 4, 0xffffffffu), "saved name is 4294967295 bytes long"},
        {edit(map.tensor_count_at, 4, 0xffffffffu), "tensor count differs"},
        {edit(map.entry_count_at, 4, 0xffffffffu), "4294967295 state entries"},
        {edit(map.at("fisher.acc").name_len_at, 4, 0xffffffffu), "saved name is 4294967295 bytes long"},
        {edit(map.at("exp_avg").count_at, 8, std::uint64_t{1} << 30), "saved 1073741824"},
        {edit(map.at("exp_avg_sq").count_at, 8, std::uint64_t{1} << 26), "saved 67108864"},
        {edit(map.at("fisher.acc").count_at, 8, ~std::uint64_t{0}), "saved 18446744073709551615"},
        {edit(map.at("fisher.bits").count_at, 8, std::uint64_t{1} << 62), "saved 4611686018427387904"},
    };
    for (const auto& c : cases) {  // no structured binding: CAPTURE's lambda names it (clang 14)
      const std::string& blob = c.first;
      const char* expect = c.second;
      rejected(victim, vm, blob, expect);
      const std::size_t bytes = bytes_during_failed_load(victim, blob);
      CAPTURE(expect);
      CHECK(bytes <= bound);
    }
  }
  SUBCASE("mask contents") {
    // units of 4: w 0–29, b 30–39 (the 40 candidates), frozen 40–41, norm 42–43; 2 words
    rejected(victim, vm, resealed(set_bit(good, 44)), "padding bits must be 0");
    rejected(victim, vm, resealed(set_bit(good, 63)), "padding bits must be 0");
    rejected(victim, vm, resealed(set_bit(good, 40)), "not a candidate");
    rejected(victim, vm, resealed(set_bit(good, 43)), "not a candidate");
    std::string all = good;
    for (std::size_t u = 0; u < 40; ++u) all = set_bit(all, u);
    rejected(victim, vm, resealed(all), "40 active units, at most 10");
    const auto& acc = map.at("fisher.acc");
    rejected(victim, vm, put_f32(acc.data_at + 4 * 3, std::numeric_limits<float>::quiet_NaN()), "not >= 0");
    rejected(victim, vm, put_f32(acc.data_at + 4 * 5, -0.5f), "not >= 0");
    rejected(victim, vm, put_f32(acc.data_at + 4 * 41, 0.0f), "not -1");
    rejected(victim, vm, put_f64("fisher.keep", 1.5), "keep 1.500000 is not in [0, 1]");
    rejected(victim, vm, put_f64("fisher.keep", std::numeric_limits<double>::quiet_NaN()), "keep");
    rejected(victim, vm, put_f64("fisher.keep", 0.1), "10 active units, at most 4");
    rejected(victim, vm, edit(map.at("fisher.restart").data_at, 1, 2), "not 0 or 1");
  }
  SUBCASE("base state and step count") {
    rejected(victim, vm, put_f64("adam.beta2", 1.0), "beta2");
    rejected(victim, vm, put_f64("adam.eps", 0.0), "eps");
    rejected(victim, vm, put_f64("adam.eps", std::numeric_limits<double>::infinity()), "eps");
    rejected(victim, vm, edit(map.steps_at, 8, ~std::uint64_t{0}), "step count 18446744073709551615 is out of range");
    rejected(victim, vm, edit(map.steps_at, 8, (std::uint64_t{1} << 53) + 1), "out of range");
  }
  SUBCASE("checksum and truncation") {
    std::string flipped = good;
    flipped[map.at("exp_avg").data_at + 17] ^= 0x10;  // a bit of a value, the CRC left as it was
    rejected(victim, vm, flipped, "CRC-32C mismatch");
    std::string bad_crc = good;
    bad_crc[map.crc_at + 2] ^= 1;
    rejected(victim, vm, bad_crc, "CRC-32C mismatch");
    const std::string before = saved(victim);
    for (std::size_t cut = 0; cut < good.size(); cut += 7) {
      std::stringstream in(good.substr(0, cut));
      CHECK_THROWS_WITH_AS(victim.load(in), doctest::Contains("truncated"), std::invalid_argument);
    }
    CHECK(saved(victim) == before);
  }
  // after the failed loads the victim runs exactly as the reference, then both take the good one
  train(victim, vm, qv, 3);
  train(ref, rm, qr, 3);
  CHECK(bitwise_equal(vm.raw_weights(), rm.raw_weights()));
  std::stringstream g1(good), g2(good);
  victim.load(g1);
  ref.load(g2);
  CHECK(victim.steps() == 5);
  train(victim, vm, qv, 4);
  train(ref, rm, qr, 4);
  CHECK(bitwise_equal(vm.raw_weights(), rm.raw_weights()));
}

TEST_CASE_TEMPLATE("checkpoint: dynamic mask contents are checked", B, FLATMIN_TEST_BACKENDS) {
  model<float> sm(mask_layout), vm(mask_layout);
  sm.set_weights(random_vec(sm.numel, 44));
  vm.set_weights(random_vec(vm.numel, 45));
  auto q = quadratic::random(sm.numel, 44);
  dynamic_t<B> src(sm.params,
                   {.base = flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}, .mask = dynamic_blocks});
  dynamic_t<B> victim(vm.params,
                      {.base = flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}, .mask = dynamic_blocks});
  train(src, sm, q, 3);
  const std::string good = saved(src);
  const auto map = parse(good);
  // units of 8: w 0–14, b 15–19 (20 candidates), frozen 20, norm 21; one word; 8 active (⌈0.4 · 20⌉)
  const auto& bits = map.at("dynamic.bits");
  const std::uint64_t word = get_le(good, bits.data_at, 4);
  // a₀ = ⌈0.4 · 20⌉ = 8; the refresh of step 3 keeps ⌊8 · 0.5⌋ = 4 and grows ⌊min(8 · 0.5, 20 · 0.6)⌋ = 4
  REQUIRE(std::popcount(static_cast<std::uint32_t>(word)) == 8);
  auto with_word = [&](std::uint64_t w) {
    std::string b = good;
    put_le(b, bits.data_at, 4, w);
    return resealed(b);
  };
  auto with_bound = [&](std::uint64_t n) {
    std::string b = good;
    put_le(b, map.at("dynamic.bound").data_at, 8, n);
    return resealed(b);
  };
  rejected(victim, vm, with_word(word | (1u << 22)), "padding bits must be 0");
  rejected(victim, vm, with_word(word | (1u << 21)), "not a candidate");
  rejected(victim, vm, with_word(0xfffffu), "20 active units and a bound of 9");
  rejected(victim, vm, with_bound(21), "bound of 21");
  rejected(victim, vm, with_bound(7), "8 active units and a bound of 7");
  rejected(victim, vm, with_bound(~std::uint64_t{0}), "bound of 18446744073709551615");
  // the audit's fuzzer findings (issue 18) as they were: an empty bits buffer (a null
  // dereference at the next step) and more active blocks than the saved weights hold (the next
  // ascent wrote past them)
  std::string empty = good;
  put_le(empty, bits.count_at, 8, 0);
  empty.erase(bits.data_at, 4);
  rejected(victim, vm, resealed(empty), "'dynamic.bits' has 1 entries here, saved 0");
  // all 20 candidate blocks active with a bound of 20 is a state the options allow: it loads, and
  // the saved weights grow to hold the 20 blocks
  std::string all_active = with_word(0xfffffu);
  put_le(all_active, map.at("dynamic.bound").data_at, 8, 20);
  std::stringstream in_all(resealed(all_active));
  auto saved_weights_bytes = [&] { return victim.extra_state_bytes() - victim.mask_state().bytes(); };
  // norm's 7 entries + a bound of ⌊20 − 20 · 0.6⌋ + 1 = 9 blocks of 8 (mask::dynamic's bound)
  CHECK(saved_weights_bytes() == (7 + 9 * 8) * sizeof(float));
  victim.load(in_all);
  CHECK(victim.mask_state().active() == 20);
  CHECK(saved_weights_bytes() == (7 + 20 * 8) * sizeof(float));
  const auto w_before = vm.raw_weights();
  train(victim, vm, q, 1);  // the ascent and restore run over all 20 blocks
  CHECK(all_finite(vm.raw_weights()));
  CHECK_FALSE(bitwise_equal(vm.raw_weights(), w_before));
  std::stringstream in(good);
  victim.load(in);
  CHECK(victim.mask_state().active() == 8);
  CHECK(victim.mask_state().host_bits() == src.mask_state().host_bits());
}

TEST_CASE("checkpoint: a checkpoint of another composition is rejected, saying which") {
  model<float> a(mask_layout);
  a.set_weights(random_vec(a.numel, 46));
  auto q = quadratic::random(a.numel, 46);
  auto sam_adamw = flatmin::sam(a.params, flatmin::base::adamw{.lr = 0.01});
  train(sam_adamw, a, q, 2);
  const std::string blob = saved(sam_adamw);
  const char* saved_id = "saved 'sharpness_aware<l2, dense, adamw, standard, none>'";

  model<float> m(mask_layout);
  m.set_weights(random_vec(m.numel, 47));
  auto check_all = [&](auto& opt, const char* this_id) {
    rejected(opt, m, blob, saved_id);
    rejected(opt, m, blob, this_id);
  };
  auto fsam = flatmin::fsam(m.params, flatmin::base::adamw{}, {.block = 1});
  check_all(fsam, "this is 'sharpness_aware<l2, fisher(block=1, source=accumulated), adamw, standard, none>'");
  auto fsam128 = flatmin::fsam(m.params, flatmin::base::adamw{}, {.block = 128});
  check_all(fsam128, "fisher(block=128, source=accumulated)");
  auto ssam_f = flatmin::ssam_f(m.params, flatmin::base::adamw{});
  check_all(ssam_f, "fisher(block=1, source=per_example)");
  auto ssam_d = flatmin::ssam_d(m.params, flatmin::base::adamw{}, {.block = 16});
  check_all(ssam_d, "dynamic(block=16)");
  auto esam = flatmin::esam(m.params, flatmin::base::adamw{});
  check_all(esam, "random(unit=tensor), adamw, sharpness_sensitive");
  auto asam = flatmin::asam(m.params, flatmin::base::adamw{});
  check_all(asam, "sharpness_aware<adaptive, dense, adamw");
  auto psam = flatmin::preconditioned_sam(m.params, flatmin::base::adamw{});
  check_all(psam, "sharpness_aware<preconditioned, dense, adamw");
  auto sam_adam = flatmin::sam(m.params, flatmin::base::adam{});
  check_all(sam_adam, "sharpness_aware<l2, dense, adam, standard, none>");
  auto sam_sgd = flatmin::sam(m.params, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
  check_all(sam_sgd, "sharpness_aware<l2, dense, sgd(momentum), standard, none>");
  auto plain = flatmin::adamw(m.params);
  check_all(plain, "sharpness_aware<none, dense, adamw, standard, none>");

  // fsam into ssam_f, and blocks of 128 into blocks of 1 (same type, other options)
  const std::string fsam_blob = saved(fsam128);
  rejected(fsam, m, fsam_blob, "composition differs");
  rejected(ssam_f, m, saved(fsam), "composition differs");
}

namespace {
// A run is a script of steps: 'n' a step of the closure protocol, 's' a step whose g_adv is
// non-finite (ascend, a NaN in the perturbed gradient, descend: skipped). `schedule(opt, i)`
// runs before action i (option schedules).
template <class Opt, class T, class Schedule>
void act(Opt& opt, model<T>& m, quadratic& q, char a, std::size_t i, const Schedule& schedule) {
  schedule(opt, i);
  if (a == 'n') {
    opt.step(q.objective(m));
  } else {
    q.eval(m);
    opt.ascend();
    m.g[0][1] = std::numeric_limits<T>::quiet_NaN();
    CHECK(opt.descend().skipped);
  }
}

// Saved after `save_at` actions of `script`, then (1) loaded into a fresh optimizer over a copy
// of the weights and (2) loaded back into the live optimizer after it ran on (a rollback): both
// continue bitwise identically to the uninterrupted run.
template <class T, class Make, class Schedule>
void check_resume(Make make, const std::string& script, std::size_t save_at, Schedule schedule) {
  CAPTURE(script);
  CAPTURE(save_at);
  model<T> ma(mask_layout), mb(mask_layout);
  ma.set_weights(random_vec(ma.numel, 50));
  mb.set_weights(random_vec(mb.numel, 50));
  auto qa = quadratic::random(ma.numel, 50, 0.5, 2.0, 0.3), qb = qa;
  auto oa = make(ma);
  auto ob = make(mb);
  std::vector<std::vector<T>> want;
  for (std::size_t i = 0; i < script.size(); ++i) {
    act(oa, ma, qa, script[i], i, schedule);
    want.push_back(ma.raw_weights());
  }
  for (std::size_t i = 0; i < save_at; ++i) act(ob, mb, qb, script[i], i, schedule);
  const std::string ck = saved(ob);
  const auto w_at_save = mb.raw_weights();
  const quadratic q_at_save = qb;

  model<T> mc(mask_layout);
  mc.set_raw_weights(w_at_save);
  auto qc = q_at_save;
  auto oc = make(mc);
  std::stringstream in(ck);
  oc.load(in);
  bool fresh_ok = true;
  for (std::size_t i = save_at; i < script.size(); ++i) {
    act(oc, mc, qc, script[i], i, schedule);
    fresh_ok = fresh_ok && bitwise_equal(mc.raw_weights(), want[i]);
  }
  CHECK(fresh_ok);

  for (std::size_t i = save_at; i < script.size(); ++i) act(ob, mb, qb, script[i], i, schedule);
  std::stringstream back(ck);
  ob.load(back);
  mb.set_raw_weights(w_at_save);
  qb = q_at_save;
  bool rollback_ok = true;
  for (std::size_t i = save_at; i < script.size(); ++i) {
    act(ob, mb, qb, script[i], i, schedule);
    rollback_ok = rollback_ok && bitwise_equal(mb.raw_weights(), want[i]);
  }
  CHECK(rollback_ok);
  CHECK(saved(ob) == saved(oc));
}

const auto no_schedule = [](auto&, std::size_t) {};
}  // namespace

TEST_CASE_TEMPLATE("checkpoint: resume is exact after a skipped step, after a refresh, and after a rollback", B,
                   FLATMIN_TEST_BACKENDS) {
  using T = float;
  auto fisher_acc = [](model<T>& m) {
    return fisher_t<B, T>(m.params, {.base = flatmin::base::adamw{.lr = 0.01}, .mask = fisher_blocks});
  };
  auto fisher_elem = [](model<T>& m) {
    return fisher_t<B, T>(m.params, {.base = flatmin::base::adamw{.lr = 0.01},
                                     .mask = flatmin::mask::fisher{.keep = 0.2, .refresh_every = 3}});
  };
  auto fisher_batch = [](model<T>& m) {
    return fisher_t<B, T>(
        m.params, {.base = flatmin::base::adamw{.lr = 0.01},
                   .mask = flatmin::mask::fisher{.keep = 0.3,
                                                 .refresh_every = 3,
                                                 .block = 8,
                                                 .source = flatmin::mask::fisher_estimator::current_batch}});
  };
  auto dynamic_blk = [](model<T>& m) {
    return dynamic_t<B, T>(m.params,
                           {.base = flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}, .mask = dynamic_blocks});
  };
  auto dynamic_elem = [](model<T>& m) {
    return dynamic_t<B, T>(m.params, {.base = flatmin::base::sgd{.lr = 0.05, .momentum = 0.9},
                                      .mask = flatmin::mask::dynamic{
                                          .sparsity = 0.7, .refresh_every = 2, .total_steps = 9, .seed = 5}});
  };
  auto random_blk = [](model<T>& m) {
    return random_t<B, T>(
        m.params, {.base = flatmin::base::sgd{.lr = 0.05, .momentum = 0.9},
                   .mask = flatmin::mask::random{
                       .beta = 0.5, .unit = flatmin::mask::granularity::block, .block = 4, .seed = 9}});
  };
  // fisher: refresh steps 1, 4, 7, 10 (step numbers count applied steps); dynamic: 3, 5, 7, 9
  SUBCASE("fisher, blocks, accumulated") {
    check_resume<T>(fisher_acc, "nnnsnnnnnn", 4, no_schedule);  // saved right after a skipped refresh step
    check_resume<T>(fisher_acc, "nnnsnnnnnn", 3, no_schedule);  // rollback over a refresh step
    check_resume<T>(fisher_acc, "nnnnnnsnnn", 4, no_schedule);  // saved right after a refresh
    check_resume<T>(fisher_acc, "nnnnsnnnnn", 5, no_schedule);  // after a skipped non-refresh step
  }
  SUBCASE("fisher, elements and current batch") {
    check_resume<T>(fisher_elem, "nnnsnnnnn", 4, no_schedule);
    check_resume<T>(fisher_elem, "nnnnnnnnn", 3, no_schedule);
    check_resume<T>(fisher_batch, "nnnsnnnnn", 4, no_schedule);
  }
  SUBCASE("dynamic") {
    check_resume<T>(dynamic_blk, "nnsnnnnnn", 3, no_schedule);
    check_resume<T>(dynamic_blk, "nnnnnnnnn", 2, no_schedule);
    check_resume<T>(dynamic_elem, "nnsnnnsnnn", 3, no_schedule);
    check_resume<T>(dynamic_elem, "nnsnnnsnnn", 7, no_schedule);
  }
  SUBCASE("random") {
    check_resume<T>(random_blk, "nnsnnnnn", 3, no_schedule);
    check_resume<T>(random_blk, "nnnnnnnn", 2, no_schedule);
  }
}

TEST_CASE_TEMPLATE("checkpoint: preconditioned SAM resumes exactly, with Adam's last beta2 and eps", B,
                   FLATMIN_TEST_BACKENDS) {
  // β2 and ε change between steps (a schedule): the preconditioner of the first step after a
  // resume uses those of the last step before it, which the constructor's options do not give.
  const auto schedule = [](auto& opt, std::size_t i) {
    opt.base().beta2 = i < 3 ? 0.999 : 0.95;
    opt.base().eps = i < 3 ? 1e-8 : 1e-3;
  };
  auto make = [](model<double>& m) {
    return precond_t<B, double>(m.params, {.base = flatmin::base::adamw{.lr = 0.01},
                                           .perturb = flatmin::perturb::preconditioned{0.1}});
  };
  check_resume<double>(make, "nnnnnnnn", 5, schedule);
  check_resume<double>(make, "nnnnsnnn", 5, schedule);
}

TEST_CASE_TEMPLATE("checkpoint: a mask saved with more active blocks grows the saved-weights buffer", B,
                   FLATMIN_TEST_BACKENDS) {
  // keep is not part of the identity (it may change between steps): a checkpoint of keep 0.25
  // (10 of 40 blocks, 7 + 40 saved entries) loads where keep is 0.1 (4 blocks, 7 + 16 entries).
  model<float> sm(mask_layout), vm(mask_layout);
  sm.set_weights(random_vec(sm.numel, 48));
  auto qs = quadratic::random(sm.numel, 48);
  fisher_t<B> src(sm.params, {.base = flatmin::base::adamw{.lr = 0.01}, .mask = fisher_blocks});
  auto small = fisher_blocks;
  small.keep = 0.1;
  fisher_t<B> victim(vm.params, {.base = flatmin::base::adamw{.lr = 0.01}, .mask = small});
  train(src, sm, qs, 4);
  CHECK(victim.extra_state_bytes() < src.extra_state_bytes());
  std::stringstream ck(saved(src));
  victim.load(ck);
  // the same saved-weights buffer (the masks' scratch for a pending refresh is not state)
  auto saved_weights = [](const auto& o) { return o.extra_state_bytes() - o.mask_state().bytes(); };
  CHECK(saved_weights(victim) == saved_weights(src));
  victim.mask().keep = 0.25;
  vm.set_raw_weights(sm.raw_weights());
  auto qv = qs;
  train(src, sm, qs, 6);
  train(victim, vm, qv, 6);
  CHECK(bitwise_equal(vm.raw_weights(), sm.raw_weights()));
}
