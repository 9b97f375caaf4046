// A small character-level GPT trained with libtorch through flatmin's adapter (flatmin/torch.hpp),
// in two phases: pretraining with AdamW on the GPL / LGPL documents of examples/data/fsf-licenses/,
// then fine-tuning on a held-out domain, the GFDL documents (first 80 % of each; the held-out loss
// is on the last 20 %), in full and with LoRA adapters (rank r on every attention projection,
// registered as LoRA pairs with binding::add_lora_pair). Fine-tuning methods, each from the same
// pretrained weights (so differences are paired): AdamW, SAM, FSAM, Functional-SAM, preconditioned
// SAM, preconditioned Functional-SAM and BAR (LoRA only), all over AdamW; `msam` (Momentum-SAM),
// `rwp`, `sampa` and, with LoRA, `flat_lora` are accepted by --methods too.
//
// Model: token + position embeddings (d), L pre-norm blocks (causal self-attention with h heads,
// GELU MLP of 4d), final LayerNorm, linear head; defaults d = 64, L = 2, h = 4, context 32, batch
// 16 (about 1.2e5 parameters with a vocabulary of about 90 characters). Time on an unloaded 2-core
// machine: see README ("The study, as run").
//
//   build:  cmake --build build --target example_torch_gpt   (needs libtorch: flatmin::torch)
//   run:    ./build/examples/example_torch_gpt [--quick] [--seeds 3] [--pretrain-steps 800]
//           [--finetune-steps 100] [--rho 0.05] [--rhos 0.02,0.1,0.5] [--pretrain-per-seed] [--jobs 2]
//           [--methods adamw,sam,fsam,functional_sam,preconditioned_sam,
//           preconditioned_functional_sam,bar] [--modes full,lora] [--data DIR]
//
// One pretrained model serves every seed (seed 1's; --pretrain-per-seed pretrains one per seed):
// the seeds' claims are about fine-tuning a given pretrained model, and a seed draws the
// fine-tuning batches and the adapters' initial A, the same for every method (paired). --rhos
// runs every method that has a ρ at each value (a sweep; labels method@ρ). The fine-tuning runs
// are independent: --jobs of them (default 2) run at once, each on one thread, so that a 2-core
// machine runs the default study in about half the time with each run's time per step that of
// one core (--jobs 1: in turn, torch's own threads as it sets them).
//
// Prints, per mode and method, the held-out loss (mean ± std over seeds), its paired difference to
// AdamW and to SAM (mean ± std over seeds), and the wall time per fine-tuning step. --quick (a few
// seconds, in ctest) runs a tiny model for a few steps and fails if a loss is not finite.
#include <flatmin/flatmin.hpp>
#include <flatmin/torch.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef FLATMIN_EXAMPLE_DATA_DIR
#define FLATMIN_EXAMPLE_DATA_DIR "examples/data"
#endif

namespace {

struct config {
  int d = 64, layers = 2, heads = 4, ctx = 32, batch = 16, rank = 4;
  int pretrain_steps = 800, finetune_steps = 100, eval_windows = 128;
  double pretrain_lr = 3e-3, finetune_lr = 1e-3, lora_lr = 3e-3, rho = 0.05;
  std::vector<double> rhos;  // --rhos: each method with a ρ runs at each (empty: {rho})
  std::vector<int> seeds{1, 2, 3};
  bool pretrain_per_seed = false;  // --pretrain-per-seed: a pretrained model per seed (else one, seed 1)
  int jobs = 2;                    // --jobs: fine-tuning runs at a time, one thread each
  std::vector<std::string> methods{"adamw",          "sam", "fsam", "functional_sam", "preconditioned_sam",
                                   "preconditioned_functional_sam", "bar"};
  std::vector<std::string> modes{"full", "lora"};
  std::string data = std::string(FLATMIN_EXAMPLE_DATA_DIR) + "/fsf-licenses";
  bool quick = false;
};

// ---- data ----------------------------------------------------------------------------------------

struct corpus {
  std::vector<std::int64_t> pre_train, pre_valid, ft_train, ft_valid;
  int vocab = 0;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s (pass --data DIR)\n", path.c_str());
    std::exit(2);
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

corpus load(const std::string& dir) {
  const char* pre[] = {"GPL-1", "GPL-2", "GPL-3", "LGPL-2", "LGPL-2.1", "LGPL-3"};
  const char* ft[] = {"GFDL-1.2", "GFDL-1.3"};
  std::map<std::string, std::string> text;
  int id[256];
  std::fill(id, id + 256, -1);
  corpus c;
  for (const auto* f : pre) text[f] = read_file(dir + "/" + f);
  for (const auto* f : ft) text[f] = read_file(dir + "/" + f);
  for (const auto& [name, t] : text)
    for (unsigned char ch : t)
      if (id[ch] < 0) id[ch] = c.vocab++;
  const auto append = [&](std::vector<std::int64_t>& to, const std::string& t, std::size_t from,
                          std::size_t end) {
    for (std::size_t i = from; i < end; ++i) to.push_back(id[static_cast<unsigned char>(t[i])]);
  };
  for (const auto* f : pre) {  // pretraining: 90 % / 10 % of each document
    const auto& t = text[f];
    append(c.pre_train, t, 0, t.size() * 9 / 10);
    append(c.pre_valid, t, t.size() * 9 / 10, t.size());
  }
  for (const auto* f : ft) {  // the held-out domain: 80 % / 20 %
    const auto& t = text[f];
    append(c.ft_train, t, 0, t.size() * 8 / 10);
    append(c.ft_valid, t, t.size() * 8 / 10, t.size());
  }
  return c;
}

// ---- model ---------------------------------------------------------------------------------------

/// y = x Wᵀ + b + (x Aᵀ) Bᵀ (α / r): a linear layer with a LoRA adapter (B = 0 at first, so the
/// adapter starts as the identity change).
struct lora_linear_impl : torch::nn::Module {
  torch::nn::Linear base{nullptr};
  torch::Tensor lora_a, lora_b;
  double scale;
  lora_linear_impl(int in, int out, int rank) : scale(2.0 / rank) {
    base = register_module("base", torch::nn::Linear(in, out));
    lora_a = register_parameter("lora_A", torch::randn({rank, in}) / std::sqrt(static_cast<double>(in)));
    lora_b = register_parameter("lora_B", torch::zeros({out, rank}));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return base->forward(x) + torch::matmul(torch::matmul(x, lora_a.t()), lora_b.t()) * scale;
  }
};
TORCH_MODULE_IMPL(lora_linear, lora_linear_impl);

struct block_impl : torch::nn::Module {
  int heads;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  lora_linear qkv{nullptr}, proj{nullptr};
  torch::nn::Linear fc{nullptr}, out{nullptr};
  block_impl(int d, int h, int rank) : heads(h) {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    qkv = register_module("qkv", lora_linear(d, 3 * d, rank));
    proj = register_module("proj", lora_linear(d, d, rank));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    fc = register_module("fc", torch::nn::Linear(d, 4 * d));
    out = register_module("out", torch::nn::Linear(4 * d, d));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& causal) {
    const auto b = x.size(0), t = x.size(1), d = x.size(2), hd = d / heads;
    auto q = qkv->forward(ln1->forward(x)).view({b, t, 3, heads, hd}).permute({2, 0, 3, 1, 4});
    auto att = torch::matmul(q[0], q[1].transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
    att = torch::softmax(att.masked_fill(causal, -1e9), -1);
    auto y = torch::matmul(att, q[2]).transpose(1, 2).reshape({b, t, d});
    auto h = x + proj->forward(y);
    return h + out->forward(torch::gelu(fc->forward(ln2->forward(h))));
  }
};
TORCH_MODULE_IMPL(block, block_impl);

struct gpt_impl : torch::nn::Module {
  torch::nn::Embedding tok{nullptr}, pos{nullptr};
  std::vector<block> blocks;
  torch::nn::LayerNorm ln{nullptr};
  torch::nn::Linear head{nullptr};
  torch::Tensor causal;
  gpt_impl(const config& c, int vocab) {
    tok = register_module("tok", torch::nn::Embedding(vocab, c.d));
    pos = register_module("pos", torch::nn::Embedding(c.ctx, c.d));
    for (int l = 0; l < c.layers; ++l)
      blocks.push_back(register_module("block" + std::to_string(l), block(c.d, c.heads, c.rank)));
    ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d})));
    head = register_module("head", torch::nn::Linear(c.d, vocab));
    causal = torch::ones({c.ctx, c.ctx}, torch::kBool).triu(1);
  }
  torch::Tensor forward(const torch::Tensor& idx) {
    const auto t = idx.size(1);
    auto x = tok->forward(idx) + pos->forward(torch::arange(t, torch::kLong));
    const auto mask = causal.index({torch::indexing::Slice(0, t), torch::indexing::Slice(0, t)});
    for (auto& b : blocks) x = b->forward(x, mask);
    return head->forward(ln->forward(x));
  }
};
TORCH_MODULE_IMPL(gpt, gpt_impl);

/// Which parameters train: the base weights (pretraining, full fine-tuning) or the adapters only.
void set_trainable(gpt& m, bool lora) {
  for (auto& item : m->named_parameters()) {
    const bool adapter = item.key().find("lora_") != std::string::npos;
    item.value().set_requires_grad(adapter == lora);
  }
}

// ---- training ------------------------------------------------------------------------------------

struct batcher {
  const std::vector<std::int64_t>& data;
  int ctx, batch;
  std::mt19937_64 rng;
  std::pair<torch::Tensor, torch::Tensor> next() {
    std::uniform_int_distribution<std::size_t> at(0, data.size() - static_cast<std::size_t>(ctx) - 2);
    auto x = torch::empty({batch, ctx}, torch::kLong), y = torch::empty({batch, ctx}, torch::kLong);
    auto* xp = x.data_ptr<std::int64_t>();
    auto* yp = y.data_ptr<std::int64_t>();
    for (int b = 0; b < batch; ++b) {
      const std::size_t o = at(rng);
      for (int t = 0; t < ctx; ++t) {
        xp[b * ctx + t] = data[o + t];
        yp[b * ctx + t] = data[o + t + 1];
      }
    }
    return {x, y};
  }
};

/// The mean next-character loss over `windows` evenly spaced windows of `data`.
double evaluate(gpt& m, const std::vector<std::int64_t>& data, const config& c) {
  const torch::NoGradGuard no_grad;
  const std::size_t span = data.size() - static_cast<std::size_t>(c.ctx) - 1;
  const int n = c.eval_windows;
  auto x = torch::empty({n, c.ctx}, torch::kLong), y = torch::empty({n, c.ctx}, torch::kLong);
  auto* xp = x.data_ptr<std::int64_t>();
  auto* yp = y.data_ptr<std::int64_t>();
  for (int w = 0; w < n; ++w) {
    const std::size_t o = span * static_cast<std::size_t>(w) / static_cast<std::size_t>(n);
    for (int t = 0; t < c.ctx; ++t) {
      xp[w * c.ctx + t] = data[o + t];
      yp[w * c.ctx + t] = data[o + t + 1];
    }
  }
  const auto logits = m->forward(x);
  return torch::cross_entropy_loss(logits.view({-1, logits.size(-1)}), y.view({-1})).item<double>();
}

/// The closure: forward, loss, backward; keeps the output cotangent ∂ℓ/∂logits of the clean pass
/// so that functional_backward() can back-propagate it at w + ε (Functional-SAM). The standard
/// descent never calls functional_backward().
struct lm_objective {
  gpt& model;
  torch::Tensor x, y, cotangent;
  bool clean = true;  // the next call is the clean pass (else SAM's second, at w + ε)
  torch::Tensor operator()() {
    auto logits = model->forward(x);
    logits.retain_grad();
    auto loss = torch::cross_entropy_loss(logits.view({-1, logits.size(-1)}), y.view({-1}));
    loss.backward();
    if (clean) cotangent = logits.grad().detach().clone();
    clean = false;
    return loss;
  }
  void functional_backward() { model->forward(x).backward(cotangent); }
};

struct outcome {
  double loss = NAN, ms_per_step = NAN;
};

template <class Make>
outcome train(gpt& m, const std::vector<std::int64_t>& train_data, const std::vector<std::int64_t>& valid,
              int steps, std::uint64_t seed, const config& c, Make make,
              const std::function<void(flatmin::libtorch::binding<float>&)>& prepare = {}) {
  flatmin::libtorch::binding<float> bound(*m);
  if (prepare) prepare(bound);
  flatmin::libtorch::optimizer opt(std::move(bound), make);
  batcher data{train_data, c.ctx, c.batch, std::mt19937_64(seed)};
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = data.next();
    lm_objective obj{m, x, y, {}};
    opt.step(obj);
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return {evaluate(m, valid, c), ms / steps};
}

/// LoRA pairs for BAR: every adapter's A and B.
void pair_adapters(flatmin::libtorch::binding<float>& b) {
  for (std::size_t i = 0; i < b.size(); ++i) {
    const std::string& n = b.name(i);
    const auto at = n.find("lora_A");
    if (at == std::string::npos) continue;
    b.add_lora_pair(n.substr(0, at - 1), n, n.substr(0, at) + "lora_B");
  }
}

/// LoRA pairs with their frozen base weights (each adapter's `base.weight`), for Flat-LoRA.
void pair_adapters_with_base(flatmin::libtorch::binding<float>& b, gpt& m, const config& c) {
  auto all = m->named_parameters(true);  // the frozen base weights too
  for (std::size_t i = 0; i < b.size(); ++i) {
    const std::string& n = b.name(i);
    const auto at = n.find("lora_A");
    if (at == std::string::npos) continue;
    const std::string prefix = n.substr(0, at);
    b.add_lora_pair(n.substr(0, at - 1), n, prefix + "lora_B", all[prefix + "base.weight"], 2.0 / c.rank);
  }
}

/// Whether a method has a radius ρ (--rhos sweeps it).
bool has_rho(const std::string& method) { return method != "adamw" && method != "rwp" && method != "flat_lora"; }

outcome finetune(const std::string& method, bool lora, gpt& m, const corpus& data, std::uint64_t seed,
                 const config& c, double rho) {
  const int steps = c.finetune_steps;
  const flatmin::base::adamw base{.lr = lora ? c.lora_lr : c.finetune_lr, .weight_decay = lora ? 0.0 : 0.01};
  const flatmin::sam_options so{.rho = rho};
  const auto& tr = data.ft_train;
  const auto& va = data.ft_valid;
  if (method == "adamw")
    return train(m, tr, va, steps, seed, c, [&](const auto& ps) { return flatmin::adamw(ps, base); });
  if (method == "sam")
    return train(m, tr, va, steps, seed, c, [&](const auto& ps) { return flatmin::sam(ps, base, so); });
  if (method == "fsam")
    return train(m, tr, va, steps, seed, c,
                 [&](const auto& ps) { return flatmin::fsam(ps, base, {.rho = rho}); });
  if (method == "functional_sam")
    return train(m, tr, va, steps, seed, c,
                 [&](const auto& ps) { return flatmin::functional_sam(ps, base, so); });
  if (method == "preconditioned_sam")
    return train(m, tr, va, steps, seed, c,
                 [&](const auto& ps) { return flatmin::preconditioned_sam(ps, base, so); });
  if (method == "preconditioned_functional_sam")
    return train(m, tr, va, steps, seed, c,
                 [&](const auto& ps) { return flatmin::preconditioned_functional_sam(ps, base, so); });
  if (method == "msam")  // Momentum-SAM: one gradient per step, ε along AdamW's first moment
    return train(m, tr, va, steps, seed, c,
                 [&](const auto& ps) { return flatmin::msam(ps, base, {.rho = rho}); });
  if (method == "rwp")  // RWP: filter-wise Gaussian ε (σ 0.01 of each row's norm), (1 − λ) g + λ g_ε
    return train(m, tr, va, steps, seed, c, [&](const auto& ps) { return flatmin::rwp(ps, base); });
  if (method == "sampa")  // SAMPa: ε from the kept look-ahead gradient, (1 − λ) g̃ + λ ∇L(y)
    return train(m, tr, va, steps, seed, c, [&](const auto& ps) { return flatmin::sampa(ps, base, {.rho = rho}); });
  if (method == "flat_lora" && lora)  // Flat-LoRA: noise on the frozen base weights, cosine ramp
    return train(
        m, tr, va, steps, seed, c,
        [&](const auto& ps) {
          return flatmin::flat_lora(ps, base, {.ramp_steps = static_cast<std::size_t>(steps), .seed = seed});
        },
        [&](auto& b) { pair_adapters_with_base(b, m, c); });
  if (method == "bar" && lora)
    return train(
        m, tr, va, steps, seed, c, [&](const auto& ps) { return flatmin::bar(ps, base, {.rho = rho}); },
        pair_adapters);
  return {};
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

std::pair<double, double> mean_std(const std::vector<double>& v) {
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= static_cast<double>(v.size());
  for (double x : v) s += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(s / static_cast<double>(v.size() - 1)) : 0.0};
}

}  // namespace

int main(int argc, char** argv) {
  config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      c.quick = true;
      c.d = 32;
      c.layers = 1;
      c.ctx = 32;
      c.batch = 8;
      c.pretrain_steps = 10;
      c.finetune_steps = 4;
      c.eval_windows = 8;
      c.seeds = {1};
    } else if (a == "--seeds") {
      c.seeds.clear();
      const int n = std::stoi(value());
      for (int s = 1; s <= n; ++s) c.seeds.push_back(s);
    } else if (a == "--pretrain-steps") {
      c.pretrain_steps = std::stoi(value());
    } else if (a == "--finetune-steps") {
      c.finetune_steps = std::stoi(value());
    } else if (a == "--rho") {
      c.rho = std::stod(value());
    } else if (a == "--rhos") {
      c.rhos.clear();
      for (const auto& r : split(value())) c.rhos.push_back(std::stod(r));
    } else if (a == "--pretrain-per-seed") {
      c.pretrain_per_seed = true;
    } else if (a == "--jobs") {
      c.jobs = std::stoi(value());
    } else if (a == "--methods") {
      c.methods = split(value());
    } else if (a == "--modes") {
      c.modes = split(value());
    } else if (a == "--data") {
      c.data = value();
    } else {
      std::fprintf(stderr, "unknown argument %s (see the header of examples/torch_gpt.cpp)\n", a.c_str());
      return 2;
    }
  }
  const corpus data = load(c.data);
  if (c.rhos.empty()) c.rhos = {c.rho};
  if (c.jobs < 1) c.jobs = 1;
  // the runs: a method with a ρ once per ρ of the sweep ("sam@0.2" when there are several)
  std::vector<std::pair<std::string, double>> runs;
  for (const auto& method : c.methods)
    if (has_rho(method))
      for (double r : c.rhos) runs.emplace_back(method, r);
    else
      runs.emplace_back(method, 0.0);
  const auto label = [&](const std::string& method, double r) {
    if (!has_rho(method) || c.rhos.size() == 1) return method;
    std::ostringstream o;
    o << method << "@" << r;
    return o.str();
  };
  bool finite = true;
  // pretraining, in turn: one model (seed 1's) or one per seed
  std::vector<std::vector<torch::Tensor>> pretrained;  // per seed: every fine-tuning run's start
  for (int seed : c.seeds) {
    if (!pretrained.empty() && !c.pretrain_per_seed) {
      pretrained.push_back(pretrained.front());
      continue;
    }
    torch::manual_seed(static_cast<std::uint64_t>(seed));
    gpt pre(c, data.vocab);
    set_trainable(pre, false);
    const auto p = train(pre, data.pre_train, data.pre_valid, c.pretrain_steps, 1000u + seed, c,
                         [&](const auto& ps) {
                           return flatmin::adamw(ps, {.lr = c.pretrain_lr, .weight_decay = 0.01});
                         });
    std::printf("seed %d: pretrained %d steps, pretraining held-out loss %.4f, GFDL held-out loss %.4f "
                "(%.1f ms/step)\n",
                seed, c.pretrain_steps, p.loss, evaluate(pre, data.ft_valid, c), p.ms_per_step);
    std::fflush(stdout);
    finite = finite && std::isfinite(p.loss);
    std::vector<torch::Tensor> w;
    for (const auto& t : pre->parameters()) w.push_back(t.detach().clone());
    pretrained.push_back(std::move(w));
  }
  // fine-tuning: every (seed, mode, run) from its seed's pretrained weights, `--jobs` at a time,
  // each on one thread (torch's intra-op threads set to 1), so that a job's time per step is what
  // one core gives it. The models are built here, in order (torch's global generator draws the
  // adapters' A), and only trained in the workers.
  struct job {
    std::size_t seed_at;
    std::string mode, method;
    double rho;
    gpt model{nullptr};
    outcome out;
  };
  std::vector<job> jobs;
  for (std::size_t si = 0; si < c.seeds.size(); ++si)
    for (const auto& mode : c.modes)
      for (const auto& [method, r] : runs) {
        const bool lora = mode == "lora";
        if ((method == "bar" || method == "flat_lora") && !lora) continue;  // they work on LoRA pairs
        gpt m(c, data.vocab);
        {
          const torch::NoGradGuard no_grad;
          const auto ps = m->parameters();
          for (std::size_t i = 0; i < ps.size(); ++i) ps[i].copy_(pretrained[si][i]);
          // the adapters' initial A per seed (the same for every method: paired); B stays 0
          torch::manual_seed(static_cast<std::uint64_t>(100 + c.seeds[si]));
          for (auto& item : m->named_parameters())
            if (item.key().find("lora_A") != std::string::npos)
              item.value().copy_(torch::randn(item.value().sizes()) /
                                 std::sqrt(static_cast<double>(item.value().size(1))));
        }
        set_trainable(m, lora);
        jobs.push_back({si, mode, method, r, m, {}});
      }
  std::atomic<std::size_t> next{0};
  std::mutex print;
  const auto worker = [&] {
    if (c.jobs > 1) at::set_num_threads(1);  // this thread's OpenMP team too (flatmin's passes)
    for (std::size_t k = next++; k < jobs.size(); k = next++) {
      job& j = jobs[k];
      const int seed = c.seeds[j.seed_at];
      j.out = finetune(j.method, j.mode == "lora", j.model, data, 2000u + seed, c, j.rho);
      const std::lock_guard<std::mutex> lock(print);
      std::printf("  seed %d %-5s %-34s held-out %.4f  %.1f ms/step\n", seed, j.mode.c_str(),
                  label(j.method, j.rho).c_str(), j.out.loss, j.out.ms_per_step);
      std::fflush(stdout);
    }
  };
  {
    std::vector<std::thread> pool;
    for (int t = 1; t < c.jobs; ++t) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
  }
  // results[mode][label] = held-out loss per seed, in seed order (paired); time per step likewise
  std::map<std::string, std::map<std::string, std::vector<double>>> loss, ms;
  for (const auto& j : jobs) {
    if (std::isnan(j.out.ms_per_step)) {
      std::fprintf(stderr, "unknown method %s\n", j.method.c_str());
      return 2;
    }
    finite = finite && std::isfinite(j.out.loss);
    loss[j.mode][label(j.method, j.rho)].push_back(j.out.loss);
    ms[j.mode][label(j.method, j.rho)].push_back(j.out.ms_per_step);
  }
  std::printf("\nheld-out loss on the GFDL tail after fine-tuning (%zu seeds, %s; diff: paired, mean ± std):\n",
              c.seeds.size(), c.pretrain_per_seed ? "a pretrained model per seed" : "one pretrained model");
  for (const auto& mode : c.modes) {
    std::printf("%s fine-tuning:\n", mode.c_str());
    for (const auto& [method, r] : runs) {
      const std::string name = label(method, r);
      if (!loss[mode].count(name)) continue;
      const auto& l = loss[mode][name];
      const auto [m, s] = mean_std(l);
      std::printf("  %-34s %.4f ± %.4f", name.c_str(), m, s);
      for (const std::string& ref : {label("adamw", r), label("sam", r)}) {  // SAM at the same ρ
        if (!loss[mode].count(ref) || name == ref) continue;
        std::vector<double> d;
        for (std::size_t i = 0; i < l.size(); ++i) d.push_back(l[i] - loss[mode][ref][i]);
        const auto [dm, ds] = mean_std(d);
        std::printf("  vs %s %+.4f ± %.4f", ref.c_str(), dm, ds);
      }
      std::printf("  %.1f ms/step\n", mean_std(ms[mode][name]).first);
    }
  }
  if (!finite) {
    std::fprintf(stderr, "a loss was not finite\n");
    return 1;
  }
  return 0;
}
