// A small character-level language model on real English text (the FSF license documents in
// examples/data/fsf-licenses/, redistributed verbatim), trained with AdamW, SAM, Functional-SAM,
// preconditioned SAM and preconditioned Functional-SAM (and, with --methods family or by name, the
// rest of the family: GSAM, WSAM, LookSAM, Friendly-SAM, Momentum-SAM, GCSAM, RWP, SAMPa);
// compared by held-out loss, with the time per step beside it.
//
// Model (written here with Eigen, float): the previous K characters → embeddings (D each) →
// tanh layer (H) → softmax over the vocabulary. Held-out split: the last 10 % of every document.
//
//   build:  cmake --build build --target example_char_lm
//   run:    ./build/examples/example_char_lm [--steps 2000] [--seeds 1,2] [--rho 0.05] [--methods all | comma list of adamw,sam,functional_sam,
//           preconditioned_sam,preconditioned_functional_sam | family | gsam,wsam,looksam,friendly_sam,msam,
//           gcsam,rwp,sampa] [--lr 1e-2]   ("all": AdamW and the seeds' four; "family": AdamW and the eight)
//           (data directory: --data DIR, default the source tree's examples/data/fsf-licenses)
//
// Functional-SAM needs the objective to save the output cotangent on the clean pass and
// back-propagate it at w + ε: `model::operator()` and `model::functional_backward` below.
#include <flatmin/flatmin.hpp>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#ifndef FLATMIN_EXAMPLE_DATA_DIR
#define FLATMIN_EXAMPLE_DATA_DIR "examples/data"
#endif

namespace {

using mat = Eigen::MatrixXf;
using vec = Eigen::VectorXf;

constexpr int K = 16;   // context characters
constexpr int D = 16;   // embedding size
constexpr int H = 256;  // hidden units
constexpr int B = 128;  // batch

struct corpus {
  std::vector<int> train, valid;
  int vocab = 0;
};

corpus load(const std::string& dir) {
  const char* files[] = {"GPL-1", "GPL-2", "GPL-3", "LGPL-2", "LGPL-2.1", "LGPL-3", "GFDL-1.2", "GFDL-1.3"};
  std::vector<std::string> texts;
  int id[256];
  std::fill(id, id + 256, -1);
  corpus c;
  for (const char* f : files) {
    std::ifstream in(dir + "/" + f, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s/%s (pass --data DIR)\n", dir.c_str(), f);
      std::exit(2);
    }
    std::stringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
    for (unsigned char ch : texts.back())
      if (id[ch] < 0) id[ch] = c.vocab++;
  }
  for (const auto& t : texts) {
    const std::size_t cut = t.size() * 9 / 10;
    for (std::size_t i = 0; i < t.size(); ++i) (i < cut ? c.train : c.valid).push_back(id[static_cast<unsigned char>(t[i])]);
  }
  return c;
}

/// The model, its gradients, and the objective the optimizers call.
struct model {
  int V;
  mat E, W1, W2;  // E: D × V, W1: H × K·D, W2: V × H
  vec b1, b2;
  mat gE, gW1, gW2;
  vec gb1, gb2;
  // The current batch and what the backward pass needs.
  std::vector<int> pos;
  const std::vector<int>* text = nullptr;
  mat X, Hh, cot;  // inputs, hidden activations, saved output cotangent ∂ℓ/∂logits

  model(int vocab, unsigned seed) : V(vocab) {
    std::mt19937 rng(seed);
    auto init = [&](mat& m, int r, int c, float s) {
      std::normal_distribution<float> nd(0.f, s);
      m.resize(r, c);
      for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(rng);
    };
    init(E, D, V, 1.0f);
    init(W1, H, K * D, 1.0f / std::sqrt(float(K * D)));
    init(W2, V, H, 1.0f / std::sqrt(float(H)));
    b1 = vec::Zero(H);
    b2 = vec::Zero(V);
    gE = mat::Zero(D, V);
    gW1 = mat::Zero(H, K * D);
    gW2 = mat::Zero(V, H);
    gb1 = vec::Zero(H);
    gb2 = vec::Zero(V);
  }

  flatmin::param_set<float> params() {
    flatmin::param_set<float> ps;
    ps.add("embedding", E, gE, flatmin::tensor_options{.weight_decay = false});
    ps.add("hidden.weight", W1, gW1);
    ps.add("hidden.bias", b1, gb1, flatmin::tensor_options{.weight_decay = false});
    ps.add("out.weight", W2, gW2);
    ps.add("out.bias", b2, gb2, flatmin::tensor_options{.weight_decay = false});
    return ps;
  }

  // Logits for the windows ending before positions `p` of `t`; keeps X and Hh for backward.
  mat forward(const std::vector<int>& t, const std::vector<int>& p) {
    const int n = static_cast<int>(p.size());
    X.resize(K * D, n);
    for (int j = 0; j < n; ++j)
      for (int k = 0; k < K; ++k) X.block(k * D, j, D, 1) = E.col(t[p[j] - K + k]);
    Hh = ((W1 * X).colwise() + b1).array().tanh().matrix();
    return (W2 * Hh).colwise() + b2;
  }

  // Mean cross-entropy (nats) and its cotangent.
  static double cross_entropy(const mat& logits, const std::vector<int>& t, const std::vector<int>& p, mat* cot) {
    double loss = 0;
    const int n = static_cast<int>(p.size());
    if (cot) cot->resize(logits.rows(), n);
    for (int j = 0; j < n; ++j) {
      const float mx = logits.col(j).maxCoeff();
      const vec e = (logits.col(j).array() - mx).exp();
      const float z = e.sum();
      loss += std::log(z) - (logits(t[p[j]], j) - mx);
      if (cot) {
        cot->col(j) = e / (z * float(n));
        (*cot)(t[p[j]], j) -= 1.0f / float(n);
      }
    }
    return loss / n;
  }

  // Jᵀ c: gradients of ⟨c, logits⟩ at the weights forward() last saw.
  void backward(const mat& c) {
    gW2.noalias() = c * Hh.transpose();
    gb2 = c.rowwise().sum();
    const mat dz = ((W2.transpose() * c).array() * (1.0f - Hh.array().square())).matrix();
    gW1.noalias() = dz * X.transpose();
    gb1 = dz.rowwise().sum();
    const mat dx = W1.transpose() * dz;
    gE.setZero();
    for (std::size_t j = 0; j < pos.size(); ++j)
      for (int k = 0; k < K; ++k) gE.col((*text)[pos[j] - K + k]) += dx.block(k * D, j, D, 1);
  }

  /// Clean pass: loss, gradient, and the cotangent saved for functional_backward().
  double operator()() {
    const mat logits = forward(*text, pos);
    const double loss = cross_entropy(logits, *text, pos, &cot);
    backward(cot);
    return loss;
  }
  /// Functional-SAM's perturbed pass: forward at the current weights, back-propagate the SAVED c.
  void functional_backward() {
    forward(*text, pos);
    backward(cot);
  }

  double evaluate(const std::vector<int>& t) {
    double sum = 0;
    std::size_t count = 0;
    std::vector<int> p;
    for (std::size_t i = K; i < t.size(); i += 1) {
      p.push_back(static_cast<int>(i));
      if (p.size() == 1024 || i + 1 == t.size()) {
        sum += cross_entropy(forward(t, p), t, p, nullptr) * double(p.size());
        count += p.size();
        p.clear();
      }
    }
    return sum / double(count);
  }
};

struct run_result {
  double valid, train, seconds;
};

// Trains `m` with `opt` for `steps` steps of batch B (cosine learning-rate decay to 10 %).
template <class Opt, class Step>
run_result train(model& m, Opt& opt, const corpus& c, int steps, unsigned seed, Step&& step) {
  std::mt19937 rng(seed * 7919u + 1);
  std::uniform_int_distribution<int> pick(K, static_cast<int>(c.train.size()) - 1);
  const double lr0 = opt.base().lr;
  m.text = &c.train;
  m.pos.resize(B);
  double recent = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) {
    for (int& p : m.pos) p = pick(rng);
    opt.base().lr = lr0 * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * s / steps)));
    const auto r = step(opt, m);
    if (s >= steps - 200) recent += r.loss / 200.0;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  opt.base().lr = lr0;
  return {m.evaluate(c.valid), recent, secs};
}

std::vector<unsigned> parse_list(const std::string& s) {
  std::vector<unsigned> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(static_cast<unsigned>(std::stoul(item)));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 2000;
  double rho = 0.05, lr = 1e-2;
  std::vector<unsigned> seeds{1, 2};
  std::string methods = "all", data = std::string(FLATMIN_EXAMPLE_DATA_DIR) + "/fsf-licenses";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--steps") steps = std::stoi(v);
    else if (a == "--rho") rho = std::stod(v);
    else if (a == "--lr") lr = std::stod(v);
    else if (a == "--seeds") seeds = parse_list(v);
    else if (a == "--methods") methods = v;
    else if (a == "--data") data = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  const corpus c = load(data);
  std::printf("corpus: %zu training, %zu held-out characters, vocabulary %d\n", c.train.size(), c.valid.size(), c.vocab);
  std::printf("model: %d-char context, embedding %d, tanh %d; batch %d, %d steps, AdamW lr %g (cosine to 10%%), "
              "weight decay 0.01, rho %g\n\n",
              K, D, H, B, steps, lr, rho);
  const flatmin::base::adamw base{.lr = lr, .weight_decay = 0.01};
  auto plain = [](auto& opt, model& m) { return opt.step([&] { return m(); }); };
  auto functional = [](auto& opt, model& m) { return opt.step(m); };

  struct row {
    const char* name;
    std::vector<double> valid, train, secs;
  };
  std::vector<row> rows;
  std::string list(",");  // ",a,b," so that a name matches only whole
  list += methods;
  list += ',';
  auto want = [&](const char* n) {
    std::string key(",");
    key += n;
    key += ',';
    return methods == "all" || list.find(key) != std::string::npos;
  };
  // The rest of the family: by name, or all of them (and AdamW) with --methods family.
  auto want_family = [&](const char* n) {
    std::string key(",");
    key += n;
    key += ',';
    return methods == "family" || list.find(key) != std::string::npos;
  };
  auto record = [&](const char* name, const run_result& r, unsigned seed) {
    auto it = std::find_if(rows.begin(), rows.end(), [&](const row& x) { return std::string(x.name) == name; });
    if (it == rows.end()) {
      rows.push_back({name, {}, {}, {}});
      it = rows.end() - 1;
    }
    it->valid.push_back(r.valid);
    it->train.push_back(r.train);
    it->secs.push_back(r.seconds);
    std::printf("  seed %u  %-30s held-out %.4f nats/char (%.3f bits)  train (last 200 steps) %.4f  %.1f s\n", seed,
                name, r.valid, r.valid / std::log(2.0), r.train, r.seconds);
    std::fflush(stdout);
  };
  for (unsigned seed : seeds) {
    if (want("adamw") || methods == "family") {
      model m(c.vocab, seed);
      auto ps = m.params();
      auto opt = flatmin::adamw(ps, base);
      record("adamw", train(m, opt, c, steps, seed, plain), seed);
    }
    if (want("sam")) {
      model m(c.vocab, seed);
      auto ps = m.params();
      auto opt = flatmin::sam(ps, base, {.rho = rho});
      record("sam", train(m, opt, c, steps, seed, plain), seed);
    }
    if (want("functional_sam")) {
      model m(c.vocab, seed);
      auto ps = m.params();
      auto opt = flatmin::functional_sam(ps, base, {.rho = rho});
      record("functional_sam", train(m, opt, c, steps, seed, functional), seed);
    }
    if (want("preconditioned_sam")) {
      model m(c.vocab, seed);
      auto ps = m.params();
      auto opt = flatmin::preconditioned_sam(ps, base, {.rho = rho});
      record("preconditioned_sam", train(m, opt, c, steps, seed, plain), seed);
    }
    if (want("preconditioned_functional_sam")) {
      model m(c.vocab, seed);
      auto ps = m.params();
      auto opt = flatmin::preconditioned_functional_sam(ps, base, {.rho = rho});
      record("preconditioned_functional_sam", train(m, opt, c, steps, seed, functional), seed);
    }
    // The family over the same AdamW, SAM's ρ where the method has a radius, otherwise the
    // official defaults (Momentum-SAM: its AdamW radius 1; RWP: σ 0.01, λ 0.5).
    auto family = [&](const char* name, auto make) {
      if (!want_family(name)) return;
      model m(c.vocab, seed);
      auto ps = m.params();
      auto opt = make(ps);
      record(name, train(m, opt, c, steps, seed, plain), seed);
    };
    family("gsam", [&](auto& ps) { return flatmin::gsam(ps, base, {.rho = rho}); });
    family("wsam", [&](auto& ps) { return flatmin::wsam(ps, base, {.rho = rho}); });
    family("looksam", [&](auto& ps) { return flatmin::looksam(ps, base, {.rho = rho}); });
    family("friendly_sam", [&](auto& ps) { return flatmin::friendly_sam(ps, base, {.rho = rho}); });
    family("msam", [&](auto& ps) { return flatmin::msam(ps, base, {.rho = 1.0}); });
    family("gcsam", [&](auto& ps) { return flatmin::gcsam(ps, base, {.rho = rho}); });
    family("rwp", [&](auto& ps) { return flatmin::rwp(ps, base, {.seed = seed}); });
    family("sampa", [&](auto& ps) { return flatmin::sampa(ps, base, {.rho = rho}); });
  }
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return s / double(v.size());
  };
  auto sd = [&](const std::vector<double>& v) {
    if (v.size() < 2) return 0.0;
    const double m = mean(v);
    double s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return std::sqrt(s / double(v.size() - 1));
  };
  // Paired by seed: every method starts from the same initialisation and sees the same batches.
  const std::vector<double>* ref = rows.empty() || std::string(rows[0].name) != "adamw" ? nullptr : &rows[0].valid;
  std::printf("\n| method | held-out loss (nats/char), mean ± sd over %zu seeds | minus AdamW's, same seed: mean "
              "(min, max) | train loss (last 200 steps) | seconds per run | ms per step |\n|---|---|---|---|---|---|\n",
              seeds.size());
  for (const auto& r : rows) {
    std::string paired = "—";
    if (ref && &r.valid != ref) {
      std::vector<double> d;
      for (std::size_t i = 0; i < r.valid.size(); ++i) d.push_back(r.valid[i] - (*ref)[i]);
      char buf[96];
      std::snprintf(buf, sizeof buf, "%+.4f (%+.4f, %+.4f)", mean(d), *std::min_element(d.begin(), d.end()),
                    *std::max_element(d.begin(), d.end()));
      paired = buf;
    }
    std::printf("| %s | %.4f ± %.4f | %s | %.4f | %.1f | %.2f |\n", r.name, mean(r.valid), sd(r.valid),
                paired.c_str(), mean(r.train), mean(r.secs), 1e3 * mean(r.secs) / steps);
  }
  return 0;
}
