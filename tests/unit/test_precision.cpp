// Separate element types: weights W, gradients G, state and arithmetic S (flatmin::precision).
// Each optimizer runs against a float64 re-derivation of its step written here, which reads the
// gradients as the G values the objective stored, computes in double (S = double throughout the
// combinations below) and rounds to W exactly where the optimizer writes a weight: after the
// ascent (w + ε) and after the base step. The state (momentum, Adam's moments) is compared with
// the reference's double values, which a state kept in W or G would miss by ~1e-8. Then: the exact
// restore in W, checkpoints of a mixed precision (round trip, refusal of another precision, the
// version-2 files of the uniform precision), param_set with two element types, and the Eigen vs
// Thrust differential for mixed precisions.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/buffers.hpp"

namespace {

namespace fm = flatmin;
using flatmin_test::buffer;
using flatmin_test::buffer_of;

// Sizes straddle the segment size (4096); one tensor without weight decay, one not perturbed.
struct tensor_spec {
  std::size_t n;
  fm::tensor_options o;
};
const std::vector<tensor_spec> specs{
    {7, {}}, {300, {.weight_decay = false}}, {4097, {}}, {33, {.perturb = false}}, {1, {}}};

// g_i = a_i (w_i − c_i) + b_i sin(3 w_i), evaluated in double from the weights as stored.
struct problem {
  std::vector<double> a, c, b;
  explicit problem(std::size_t n) {
    std::uint64_t s = 0x9e3779b97f4a7c15ull;
    auto u = [&] {  // xorshift64*, uniform in [−1, 1)
      s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
      return static_cast<double>((s * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-52 - 1.0;
    };
    for (std::size_t i = 0; i < n; ++i) {
      a.push_back(1.5 + u());
      c.push_back(0.5 * u());
      b.push_back(0.3 * u());
    }
  }
  double grad(std::size_t i, double w) const { return a[i] * (w - c[i]) + b[i] * std::sin(3 * w); }
};

template <class W>
double round_to(double x) {
  return static_cast<double>(static_cast<W>(x));
}

// The user's memory on backend B, in W and G, and a host mirror of it.
template <class B, class W, class G>
struct model {
  std::vector<buffer<B, W>> w;
  std::vector<buffer<B, G>> g;
  fm::param_set<W, G> params;
  std::size_t numel = 0;
  explicit model(const std::vector<double>& w0) {
    std::size_t off = 0;
    for (const auto& s : specs) {
      std::vector<W> hw(s.n);
      for (std::size_t j = 0; j < s.n; ++j) hw[j] = static_cast<W>(w0[off + j]);
      w.push_back(buffer_of<B, W>::make(hw));
      g.push_back(buffer_of<B, G>::make(std::vector<G>(s.n, G(0))));
      off += s.n;
    }
    for (std::size_t t = 0; t < specs.size(); ++t)
      params.add("t" + std::to_string(t), w[t], g[t], specs[t].o);
    numel = off;
  }
  std::vector<double> weights() const {
    std::vector<double> r;
    for (const auto& b : w)
      for (W x : buffer_of<B, W>::host(b)) r.push_back(static_cast<double>(x));
    return r;
  }
  std::vector<W> raw_weights() const {
    std::vector<W> r;
    for (const auto& b : w)
      for (W x : buffer_of<B, W>::host(b)) r.push_back(x);
    return r;
  }
  // g ← ∇L(w), rounded to G as a user's backward pass stores it.
  void eval(const problem& p) {
    const auto x = weights();
    std::size_t off = 0;
    for (std::size_t t = 0; t < specs.size(); ++t) {
      std::vector<G> h(specs[t].n);
      for (std::size_t j = 0; j < h.size(); ++j) h[j] = static_cast<G>(p.grad(off + j, x[off + j]));
      buffer_of<B, G>::assign(g[t], h);
      off += specs[t].n;
    }
  }
};

std::uint32_t flags_at(std::size_t i) {
  for (const auto& s : specs) {
    if (i < s.n) return fm::to_flags(s.o);
    i -= s.n;
  }
  return 0;
}

// The float64 reference: state in double, weights rounded to W where the optimizer writes them.
struct reference {
  // base step options (one of the two forms)
  bool adam = false;
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool nesterov = false, decoupled = false;
  double rho = 0.05, xi = 1e-12;
  std::vector<double> buf, m, v;
  std::size_t t = 0;

  // One SAM step from w (W values): returns the perturbed weights; w becomes the stepped ones.
  template <class W, class G>
  std::vector<double> step(std::vector<double>& w, const problem& p) {
    const std::size_t n = w.size();
    std::vector<double> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = round_to<G>(p.grad(i, w[i]));
    double n2 = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (flags_at(i) & fm::tensor_flags::perturb) n2 += g[i] * g[i];
    const double scale = rho / (std::sqrt(n2) + xi);
    std::vector<double> pert = w;
    for (std::size_t i = 0; i < n; ++i)
      if (flags_at(i) & fm::tensor_flags::perturb) pert[i] = round_to<W>(w[i] + scale * g[i]);
    for (std::size_t i = 0; i < n; ++i) g[i] = round_to<G>(p.grad(i, pert[i]));
    ++t;
    if (buf.empty()) buf.assign(n, 0.0), m.assign(n, 0.0), v.assign(n, 0.0);
    const double step_size = lr / (1.0 - std::pow(beta1, double(t)));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, double(t)));
    for (std::size_t i = 0; i < n; ++i) {
      const bool wd = flags_at(i) & fm::tensor_flags::weight_decay;
      double x = w[i], d = g[i];
      if (!adam) {  // torch.optim.SGD (coupled decay, dampening, Nesterov)
        d = d + (wd ? weight_decay : 0.0) * x;
        if (momentum > 0) {
          buf[i] = t == 1 ? d : momentum * buf[i] + (1 - dampening) * d;
          d = nesterov ? d + momentum * buf[i] : buf[i];
        }
        x = x - lr * d;
      } else {  // torch.optim.Adam / AdamW
        if (wd && !decoupled) d = d + weight_decay * x;
        if (wd && decoupled) x = x * (1 - lr * weight_decay);
        m[i] = beta1 * m[i] + (1 - beta1) * d;
        v[i] = beta2 * v[i] + (1 - beta2) * d * d;
        x = x - step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
      }
      w[i] = round_to<W>(x);
    }
    return pert;
  }
};

std::uint64_t get_le(const std::string& b, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= std::uint64_t(static_cast<unsigned char>(b.at(at + i))) << (8 * i);
  return v;
}

// The values of state entry `name` of a checkpoint (format table in optimizer/checkpoint.hpp).
std::vector<double> entry_values(const std::string& b, const std::string& name, unsigned* size = nullptr) {
  std::size_t p = 16;
  auto str = [&] {
    const auto n = get_le(b, p, 4);
    std::string s = b.substr(p + 4, n);
    p += 4 + n;
    return s;
  };
  str();
  p += 8;
  const auto k = get_le(b, p, 4);
  p += 4;
  for (std::uint64_t t = 0; t < k; ++t) str(), p += 12;
  p += 8;
  const auto e = get_le(b, p, 4);
  p += 4;
  for (std::uint64_t i = 0; i < e; ++i) {
    const std::string n = str();
    const unsigned sz = static_cast<unsigned char>(b.at(p + 1));
    const auto count = get_le(b, p + 4, 8);
    p += 12;
    if (n == name) {
      if (size) *size = sz;
      std::vector<double> r(count);
      for (std::size_t j = 0; j < count; ++j) {
        if (sz == 8) {
          double x;
          std::memcpy(&x, b.data() + p + 8 * j, 8);
          r[j] = x;
        } else {
          float x;
          std::memcpy(&x, b.data() + p + 4 * j, 4);
          r[j] = x;
        }
      }
      return r;
    }
    p += count * sz;
  }
  throw std::runtime_error("no state entry " + name);
}

template <class W>
double weight_tol() {
  // Float weights: the same roundings as the reference; 1 ulp covers a reassociated reduction or a
  // contracted multiply-add in double flipping one rounding. Double weights: 20 steps of double
  // arithmetic in another order.
  return std::is_same_v<W, float> ? 0x1.0p-23 : 1e-12;
}

double max_rel(const std::vector<double>& x, const std::vector<double>& y) {
  REQUIRE(x.size() == y.size());
  double e = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    e = std::max(e, std::fabs(x[i] - y[i]) / std::max(1.0, std::fabs(y[i])));
  return e;
}

// The optimizer of precision P (a floating type or a precision<W, G, S>) with SAM's perturbation.
template <class P, class B, class Base, class Mask = fm::mask::dense>
auto make_sam(const fm::param_set<typename fm::detail::precision_of_t<P>::weight_type,
                                  typename fm::detail::precision_of_t<P>::grad_type>& ps,
              Base base,
              fm::perturb::l2 pert = {}, Mask mask = {}) {
  return fm::sharpness_aware<P, B, fm::perturb::l2, Mask, Base>(
      ps, {.base = std::move(base), .perturb = pert, .mask = std::move(mask)});
}

template <class B, class W, class G, class S, class Base>
void against_reference(const Base& base, reference r, const char* state_entry, int steps) {
  using P = fm::precision<W, G, S>;
  CAPTURE(steps);
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = round_to<W>(0.8 * p.c[i] + 0.2);
  model<B, W, G> md(w0);
  w0.resize(md.numel);
  auto opt = make_sam<P, B>(md.params, base, fm::perturb::l2{r.rho, r.xi});
  static_assert(std::is_same_v<typename decltype(opt)::value_type, S>);
  std::vector<double> w = w0;
  for (int s = 1; s <= steps; ++s) {
    CAPTURE(s);
    const auto pert = r.template step<W, G>(w, p);
    md.eval(p);
    REQUIRE_FALSE(opt.ascend().skipped);
    CHECK(max_rel(md.weights(), pert) <= weight_tol<W>());
    md.eval(p);
    REQUIRE_FALSE(opt.descend().skipped);
    CHECK(max_rel(md.weights(), w) <= weight_tol<W>());
  }
  // The state is S: its bytes, its checkpoint entries, and its values to double precision.
  std::ostringstream os;
  opt.save(os);
  unsigned size = 0;
  const auto state = entry_values(os.str(), state_entry, &size);
  CHECK(size == sizeof(S));
  const std::string e = state_entry;
  const auto& want = e == "momentum_buffer" ? r.buf : e == "exp_avg" ? r.m : r.v;
  CHECK(max_rel(state, want) <= 1e-12);
  // The saved weights are W (a copy of the weights), the rest of the extra state is the mask's.
  CHECK(opt.extra_state_bytes() - opt.mask_state().bytes() == md.numel * sizeof(W));
}

}  // namespace

TEST_CASE_TEMPLATE("precision: SAM over SGD with momentum against a float64 reference rounding to W", B,
                   FLATMIN_TEST_BACKENDS) {
  reference r;
  r.lr = 0.05, r.momentum = 0.9, r.dampening = 0.1, r.weight_decay = 0.01;
  const fm::base::sgd base{.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01};
  for (int steps : {1, 20}) {
    against_reference<B, float, float, double>(base, r, "momentum_buffer", steps);
    against_reference<B, double, float, double>(base, r, "momentum_buffer", steps);
    against_reference<B, float, double, double>(base, r, "momentum_buffer", steps);
  }
}

TEST_CASE_TEMPLATE("precision: SAM over Adam and AdamW against a float64 reference rounding to W", B,
                   FLATMIN_TEST_BACKENDS) {
  for (bool decoupled : {false, true}) {
    CAPTURE(decoupled);
    reference r;
    r.adam = true, r.lr = 0.01, r.beta1 = 0.8, r.beta2 = 0.99, r.eps = 1e-8, r.weight_decay = 0.1;
    r.decoupled = decoupled, r.rho = 0.1, r.xi = 1e-12;
    const fm::base::adam base{.lr = 0.01,
                              .beta1 = 0.8,
                              .beta2 = 0.99,
                              .eps = 1e-8,
                              .weight_decay = 0.1,
                              .decay = decoupled ? fm::base::weight_decay_mode::decoupled
                                                 : fm::base::weight_decay_mode::coupled};
    for (int steps : {1, 20}) {
      against_reference<B, float, float, double>(base, r, "exp_avg", steps);
      against_reference<B, float, float, double>(base, r, "exp_avg_sq", steps);
      against_reference<B, double, float, double>(base, r, "exp_avg_sq", steps);
      against_reference<B, float, double, double>(base, r, "exp_avg", steps);
    }
  }
}

TEST_CASE_TEMPLATE("precision: ascend() then cancel() restores the weights bit-exactly in W", B,
                   FLATMIN_TEST_BACKENDS) {
  const problem p(6000);
  auto check = [&](auto& md, auto opt) {
    const auto before = md.raw_weights();
    for (int i = 0; i < 3; ++i) {  // also after steps, with state and a refreshed mask
      md.eval(p);
      REQUIRE_FALSE(opt.ascend().skipped);
      CHECK(md.raw_weights() != before);
      opt.cancel();
      CHECK(md.raw_weights() == before);  // operator== of W: bitwise for finite values
      CHECK(std::memcmp(md.raw_weights().data(), before.data(), before.size() * sizeof(before[0])) == 0);
    }
  };
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = 0.8 * p.c[i] + 0.2 + 1e-9 * double(i);
  {
    using P = fm::precision<float, float, double>;
    model<B, float, float> md(w0);
    check(md, make_sam<P, B>(md.params, fm::base::sgd{.lr = 0.1, .momentum = 0.9}));
  }
  {
    using P = fm::precision<double, float, double>;
    model<B, double, float> md(w0);
    check(md, make_sam<P, B>(md.params, fm::base::adam{.lr = 0.01}, {.rho = 0.5}));
  }
  {
    using P = fm::precision<float, double, double>;
    model<B, float, double> md(w0);
    check(md, make_sam<P, B>(md.params, fm::base::sgd{.lr = 0.1}, {.rho = 0.5},
                             fm::mask::fisher{.keep = 0.3, .refresh_every = 1, .block = 64}));
  }
}

TEST_CASE_TEMPLATE("precision: a checkpoint of a mixed precision round-trips and records W, G and S", B,
                   FLATMIN_TEST_BACKENDS) {
  using P = fm::precision<float, double, double>;
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = 0.8 * p.c[i] + 0.2;

  // A resumed run continues bit for bit: state loaded into a fresh optimizer over the weights
  // the first one reached.
  model<B, float, double> a(w0), b(w0);
  auto make = [](auto& md) {
    return make_sam<P, B>(md.params, fm::base::adam{.lr = 0.01}, {.rho = 0.2},
                          fm::mask::fisher{.keep = 0.4, .refresh_every = 2, .block = 32});
  };
  auto oa = make(a);
  auto obj_a = [&] {
    a.eval(p);
    return 0.0;
  };
  auto obj_b = [&] {
    b.eval(p);
    return 0.0;
  };
  for (int i = 0; i < 3; ++i) REQUIRE_FALSE(oa.step(obj_a).skipped);
  std::ostringstream os;
  oa.save(os);
  const std::string blob = os.str();
  // the element type field: 'f', sizeof(S), sizeof(W), sizeof(G)
  CHECK(blob.at(12) == 'f');
  CHECK(blob.at(13) == 8);
  CHECK(blob.at(14) == 4);
  CHECK(blob.at(15) == 8);
  unsigned size = 0;
  entry_values(blob, "exp_avg", &size);
  CHECK(size == 8);

  // b: the weights a reached, a fresh optimizer, a's state loaded
  {
    const auto wa = a.raw_weights();
    std::size_t off = 0;
    for (std::size_t t = 0; t < specs.size(); ++t) {
      const auto first = wa.begin() + static_cast<std::ptrdiff_t>(off);
      const auto last = first + static_cast<std::ptrdiff_t>(specs[t].n);
      buffer_of<B, float>::assign(b.w[t], std::vector<float>(first, last));
      off += specs[t].n;
    }
  }
  auto ob = make(b);
  std::istringstream is(blob);
  ob.load(is);
  CHECK(ob.steps() == 3);
  std::ostringstream os2;
  ob.save(os2);
  CHECK(os2.str() == blob);
  for (int i = 0; i < 4; ++i) {
    REQUIRE_FALSE(oa.step(obj_a).skipped);
    REQUIRE_FALSE(ob.step(obj_b).skipped);
  }
  CHECK(a.raw_weights() == b.raw_weights());
}

TEST_CASE_TEMPLATE("precision: a checkpoint of another precision is refused, naming both", B,
                   FLATMIN_TEST_BACKENDS) {
  std::vector<double> w0(6000, 0.25);
  auto blob_of = [&](auto opt) {
    auto obj = [&] { return 0.0; };
    REQUIRE_FALSE(opt.step(obj).skipped);
    std::ostringstream os;
    opt.save(os);
    return os.str();
  };
  auto refused = [&](auto& md, auto opt, const std::string& blob, const std::string& message) {
    const auto before = md.raw_weights();
    std::istringstream is(blob);
    CHECK_THROWS_WITH_AS(opt.load(is), doctest::Contains(message.c_str()), std::invalid_argument);
    CHECK(opt.steps() == 0);
    CHECK(md.raw_weights() == before);
  };
  const fm::base::sgd sgd{.lr = 0.1, .momentum = 0.9};
  model<B, float, float> f(w0), f2(w0);
  model<B, float, double> fd(w0);
  model<B, double, double> d(w0);
  const std::string uniform = blob_of(make_sam<float, B>(f.params, sgd));
  const std::string mixed = blob_of(make_sam<fm::precision<float, float, double>, B>(f2.params, sgd));
  const std::string mixed_g = blob_of(make_sam<fm::precision<float, double, double>, B>(fd.params, sgd));
  CHECK(uniform.substr(12, 4) == std::string("f\x04\x00\x00", 4));  // as before separate types
  CHECK(mixed.substr(12, 4) == std::string("f\x08\x04\x04", 4));

  refused(f, make_sam<float, B>(f.params, sgd), mixed,
          "element type differs: saved weights float, gradients float, state double, this optimizer uses "
          "float");
  refused(f2, make_sam<fm::precision<float, float, double>, B>(f2.params, sgd), uniform,
          "element type differs: saved float, this optimizer uses weights float, gradients float, "
          "state double");
  refused(f2, make_sam<fm::precision<float, float, double>, B>(f2.params, sgd), mixed_g,
          "element type differs: saved weights float, gradients double, state double, this optimizer uses "
          "weights float, gradients float, state double");
  refused(d, make_sam<double, B>(d.params, sgd), mixed_g,
          "element type differs: saved weights float, gradients double, state double, this optimizer uses "
          "double");
}

// A version-2 checkpoint written by flatmin at c0b02cb (before the element types were separated),
// by this program:
//   std::vector<float> w{0.5f, -0.25f, 1.0f}, g{0.125f, 0.5f, -0.75f};
//   flatmin::param_set<float> ps;  ps.add("w", w, g);
//   auto opt = flatmin::sam(ps, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9});
//   opt.step([&] { return 1.0; });  opt.save(os);
// (the objective leaves g as it is: the momentum buffer is g, 0.125, 0.5, −0.75).
const unsigned char v2_from_main[] = {
    0x46, 0x4c, 0x41, 0x54, 0x4d, 0x49, 0x4e, 0x32, 0x02, 0x00, 0x00, 0x00, 0x66, 0x04, 0x00, 0x00,
    0x39, 0x00, 0x00, 0x00, 0x73, 0x68, 0x61, 0x72, 0x70, 0x6e, 0x65, 0x73, 0x73, 0x5f, 0x61, 0x77,
    0x61, 0x72, 0x65, 0x3c, 0x6c, 0x32, 0x2c, 0x20, 0x64, 0x65, 0x6e, 0x73, 0x65, 0x2c, 0x20, 0x73,
    0x67, 0x64, 0x28, 0x6d, 0x6f, 0x6d, 0x65, 0x6e, 0x74, 0x75, 0x6d, 0x29, 0x2c, 0x20, 0x73, 0x74,
    0x61, 0x6e, 0x64, 0x61, 0x72, 0x64, 0x2c, 0x20, 0x6e, 0x6f, 0x6e, 0x65, 0x3e, 0x03, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x77, 0x03, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x6d, 0x6f, 0x6d, 0x65, 0x6e, 0x74,
    0x75, 0x6d, 0x5f, 0x62, 0x75, 0x66, 0x66, 0x65, 0x72, 0x66, 0x04, 0x00, 0x00, 0x03, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3e, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x40,
    0xbf, 0x21, 0x80, 0x3b, 0xa7};

TEST_CASE("precision: a version-2 checkpoint of the uniform precision written before loads, and is "
          "written the same") {
  const std::string blob(reinterpret_cast<const char*>(v2_from_main), sizeof(v2_from_main));
  // The same run here writes the same bytes.
  {
    std::vector<float> w{0.5f, -0.25f, 1.0f}, g{0.125f, 0.5f, -0.75f};
    fm::param_set<float> ps;
    ps.add("w", w, g);
    auto opt = make_sam<float, fm::backend::eigen>(ps, fm::base::sgd{.lr = 0.1, .momentum = 0.9});
    opt.step([&] { return 1.0; });
    std::ostringstream os;
    opt.save(os);
    CHECK(os.str() == blob);
  }
  // It loads into a fresh optimizer, which then continues from its momentum: with g fixed,
  // b₂ = 0.9 b₁ + g = 1.9 g, and w moves by −0.1 · 1.9 g (SAM's second gradient is g too).
  std::vector<float> w{1.0f, 2.0f, 3.0f}, g{0.125f, 0.5f, -0.75f};
  fm::param_set<float> ps;
  ps.add("w", w, g);
  auto opt = make_sam<float, fm::backend::eigen>(ps, fm::base::sgd{.lr = 0.1, .momentum = 0.9});
  std::istringstream is(blob);
  opt.load(is);
  CHECK(opt.steps() == 1);
  CHECK(entry_values(blob, "momentum_buffer") == std::vector<double>{0.125, 0.5, -0.75});
  opt.step([&] { return 1.0; });
  const float lr = 0.1f, mu = 0.9f;
  for (std::size_t i = 0; i < 3; ++i) {
    const float b = mu * g[i] + g[i];
    CHECK(w[i] == float(1.0f + float(i)) - lr * b);
  }
}

TEST_CASE("precision: param_set with weights and gradients of two types") {
  std::vector<float> w(12, 1.0f), w2(3, 2.0f);
  std::vector<double> g(12, 0.5), g2(3, 0.25);
  fm::param_set<float, double> ps;
  auto& v = ps.add("a", w, g, {3, 4});
  CHECK(v.value == w.data());
  CHECK(v.grad == g.data());
  CHECK(v.shape == std::vector<std::size_t>{3, 4});
  ps.add("b", w2.data(), g2.data(), {3}, {.weight_decay = false});
  CHECK(ps[1].flags() == fm::to_flags({.weight_decay = false}));
  ps.validate();
  static_assert(std::is_same_v<decltype(ps)::value_type, float>);
  static_assert(std::is_same_v<decltype(ps)::grad_type, double>);
  // Overlap is found across the two types: a float value inside the bytes of a double gradient.
  fm::param_set<float, double> bad;
  std::vector<double> big(8, 0.0);
  bad.add("g", w.data(), big.data(), {8});
  bad.add("w", reinterpret_cast<float*>(big.data() + 2), g2.data(), {2});
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("overlaps"), std::invalid_argument);
  // mismatched sizes of value and gradient buffers are named
  fm::param_set<float, double> sz;
  std::vector<double> g5(5, 0.0);
  CHECK_THROWS_WITH_AS(sz.add("x", w2, g5), doctest::Contains("3 values but 5 gradient entries"),
                       std::invalid_argument);
}

#if defined(FLATMIN_TEST_WITH_THRUST)
// The same mixed-precision runs on backend::eigen and backend::thrust: weights and every state
// entry (through save()) bitwise equal.
template <class P, class Mask, class Base>
void differential(Base base, Mask mask) {
  using W = typename P::weight_type;
  using G = typename P::grad_type;
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = 0.8 * p.c[i] + 0.2;
  model<fm::backend::eigen, W, G> e(w0);
  model<fm::backend::thrust, W, G> t(w0);
  auto oe = make_sam<P, fm::backend::eigen>(e.params, base, {.rho = 0.2}, mask);
  auto ot = make_sam<P, fm::backend::thrust>(t.params, base, {.rho = 0.2}, mask);
  for (int s = 0; s < 6; ++s) {
    CAPTURE(s);
    e.eval(p);
    t.eval(p);
    // both backends sum in the one order of backend/: the reductions agree bitwise too
    const auto re = oe.ascend(), rt = ot.ascend();
    CHECK(re.grad_norm == rt.grad_norm);
    CHECK(re.perturbation_norm == rt.perturbation_norm);
    CHECK(re.mask_density == rt.mask_density);
    e.eval(p);
    t.eval(p);
    const auto de = oe.descend(), dt = ot.descend();
    CHECK(de.perturbed_grad_norm == dt.perturbed_grad_norm);
    CHECK(e.raw_weights() == t.raw_weights());
  }
  std::ostringstream se, st;
  oe.save(se), ot.save(st);
  CHECK(se.str() == st.str());
}

TEST_CASE("precision: backend::eigen and backend::thrust agree bitwise for mixed precisions") {
  differential<fm::precision<float, float, double>>(fm::base::sgd{.lr = 0.05, .momentum = 0.9},
                                                     fm::mask::dense{});
  differential<fm::precision<float, double, double>>(fm::base::adam{.lr = 0.01},
                                                      fm::mask::fisher{.keep = 0.3, .refresh_every = 2});
  differential<fm::precision<double, float, double>>(fm::base::adam{.lr = 0.01, .weight_decay = 0.1},
                                                      fm::mask::dynamic{.refresh_every = 2});
  differential<fm::precision<float, float, double>>(fm::base::sgd{.lr = 0.05},
                                                     fm::mask::random{.beta = 0.5});
}
#endif
