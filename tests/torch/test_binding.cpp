// The libtorch adapter's binding: what it registers and refuses, the stale-binding checks (each
// case raises a usage_error naming the tensor and leaves the weights as they were; rebind() then
// works and keeps the optimizer's state), and the in-place zeroing of step(closure).
#include <flatmin/flatmin.hpp>
#include <flatmin/torch.hpp>
#include <torch/torch.h>
#if defined(FLATMIN_TEST_WITH_THRUST)
#include <flatmin/backend/thrust.hpp>
#endif

#include <doctest/doctest.h>

#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace {

namespace fl = flatmin::libtorch;

torch::nn::Sequential make_net(torch::Dtype dtype = torch::kDouble) {
  torch::manual_seed(3);
  torch::nn::Sequential net(torch::nn::Linear(3, 5), torch::nn::Tanh(), torch::nn::Linear(5, 2));
  net->to(dtype);
  return net;
}

torch::Tensor inputs(torch::Dtype dtype = torch::kDouble) {
  torch::manual_seed(5);
  return torch::randn({8, 3}, dtype);
}

/// A copy of every parameter's values.
std::vector<torch::Tensor> snapshot(const torch::nn::Module& net) {
  std::vector<torch::Tensor> out;
  for (const auto& p : net.parameters()) out.push_back(p.detach().clone());
  return out;
}
bool same_values(const torch::nn::Module& net, const std::vector<torch::Tensor>& s) {
  const auto ps = net.parameters();
  if (ps.size() != s.size()) return false;
  for (std::size_t i = 0; i < ps.size(); ++i)
    if (ps[i].scalar_type() != s[i].scalar_type() || !torch::equal(ps[i].detach(), s[i])) return false;
  return true;
}

/// The usage_error message of f(), or "" if it did not throw one.
template <class F>
std::string usage_message(F&& f) {
  try {
    f();
  } catch (const flatmin::usage_error& e) {
    return e.what();
  }
  return "";
}

auto sam_sgd = [](const auto& ps) {
  return flatmin::sam(ps, flatmin::base::sgd{.lr = 0.1, .momentum = 0.9}, {.rho = 0.05});
};
auto sam_adam = [](const auto& ps) { return flatmin::sam(ps, flatmin::base::adam{.lr = 1e-2}, {.rho = 0.05}); };

}  // namespace

TEST_CASE("a binding registers the trainable parameters with their names, shapes and memory") {
  auto net = make_net();
  net[0]->as<torch::nn::Linear>()->bias.set_requires_grad(false);  // frozen: not registered
  const fl::binding<double> b(*net, [](const std::string& name, const torch::Tensor&) {
    return flatmin::tensor_options{.weight_decay = name.find("bias") == std::string::npos};
  });
  const auto& ps = b.params();
  REQUIRE(ps.size() == 3);
  const std::vector<std::string> names = {"0.weight", "2.weight", "2.bias"};
  const auto all = net->named_parameters();
  for (std::size_t i = 0; i < 3; ++i) {
    const torch::Tensor& p = all[names[i]];
    CHECK(ps[i].name == names[i]);
    CHECK(ps[i].value == p.data_ptr<double>());
    REQUIRE(p.grad().defined());  // allocated: zeros of the same dtype and device
    CHECK(ps[i].grad == p.grad().data_ptr<double>());
    CHECK((p.grad().scalar_type() == torch::kDouble));
    CHECK(torch::equal(p.grad(), torch::zeros_like(p)));
    CHECK(ps[i].size == static_cast<std::size_t>(p.numel()));
    CHECK((ps[i].shape == std::vector<std::size_t>(p.sizes().begin(), p.sizes().end())));
    CHECK(ps[i].options.weight_decay == (i < 2));
  }
  CHECK_FALSE(all["0.bias"].grad().defined());

  // A list of tensors: named by position; a 0-dim tensor is one value; an existing gradient is kept.
  auto a = torch::randn({2, 3}, torch::kFloat).requires_grad_();
  auto s = torch::tensor(1.5f).requires_grad_();
  a.mutable_grad() = torch::ones({2, 3});
  const fl::binding<float> list({a, s});
  CHECK(list.params()[0].name == "0");
  CHECK(list.params()[1].name == "1");
  CHECK((list.params()[1].shape == std::vector<std::size_t>{1}));
  CHECK(list.params()[0].grad == a.grad().data_ptr<float>());
  CHECK(a.grad().sum().item<float>() == 6.0f);
}

TEST_CASE("a binding refuses what flatmin cannot update, naming the tensor") {
  SUBCASE("mixed dtypes: a parameter of each is named") {
    auto net = make_net();
    net[2]->to(torch::kFloat);
    const std::string m = usage_message([&] { fl::binding<double>{*net}; });
    CHECK(m.find("mixed dtypes") != std::string::npos);
    CHECK(m.find("'0.weight' is double") != std::string::npos);
    CHECK(m.find("'2.weight' is float") != std::string::npos);
  }
  SUBCASE("the other floating type, and bf16 / half") {
    auto net = make_net(torch::kFloat);
    CHECK(usage_message([&] { fl::binding<double>{*net}; }).find("use binding<float>") != std::string::npos);
    auto h = torch::zeros({4}, torch::kHalf).requires_grad_();
    CHECK(usage_message([&] { fl::binding<float>{{h}}; }).find("'0' is half, this binding is for float: use "
                                                             "binding<flatmin::half>") != std::string::npos);
    auto bf = torch::zeros({4}, torch::kBFloat16).requires_grad_();
    CHECK(usage_message([&] { fl::binding<flatmin::half>{{bf}}; })
              .find("is bfloat16, this binding is for half: use binding<flatmin::bfloat16>") != std::string::npos);
    auto i = torch::zeros({4}, torch::kInt);
    CHECK(usage_message([&] { fl::binding<float>{{i}}; })
              .find("binds float, double, bfloat16 and half tensors") != std::string::npos);
  }
  SUBCASE("non-contiguous") {
    auto t = torch::randn({3, 4}, torch::kDouble).t().requires_grad_();  // a transposed view
    const std::string m = usage_message([&] { fl::binding<double>{fl::named_tensors{{"w_t", t}}}; });
    CHECK(m.find("'w_t' is not contiguous") != std::string::npos);
  }
  SUBCASE("sparse") {
    const auto idx = torch::tensor({0, 2}, torch::kLong).reshape({1, 2});
    const auto val = torch::tensor({1.0, 2.0}, torch::kDouble);
    const auto sp = torch::sparse_coo_tensor(idx, val, {4});
    const std::string m = usage_message([&] { fl::binding<double>{fl::named_tensors{{"emb", sp}}}; });
    CHECK(m.find("'emb' is not dense") != std::string::npos);
  }
  SUBCASE("mixed devices, and devices other than the CPU") {
    auto cpu = torch::zeros({3}, torch::kDouble);
    auto meta = torch::empty({3}, torch::TensorOptions().dtype(torch::kDouble).device(torch::kMeta));
    const std::string m = usage_message([&] { fl::binding<double>{fl::named_tensors{{"a", cpu}, {"b", meta}}}; });
    CHECK(m.find("mixed devices") != std::string::npos);
    CHECK(m.find("'a' is on cpu") != std::string::npos);
    CHECK(m.find("'b' is on meta") != std::string::npos);
    CHECK(usage_message([&] { fl::binding<double>{fl::named_tensors{{"b", meta}}}; }).find("only CPU") !=
          std::string::npos);
  }
  SUBCASE("a gradient of another dtype or shape") {
    auto t = torch::zeros({3}, torch::kDouble).requires_grad_();
    t.mutable_grad() = torch::zeros({3}, torch::kFloat);
    CHECK(usage_message([&] { fl::binding<double>{fl::named_tensors{{"t", t}}}; }).find("the gradient of 't'") !=
          std::string::npos);
  }
}

TEST_CASE("every stale binding raises, names the tensor and leaves the weights; rebind() then works") {
  auto net = make_net();
  const auto x = inputs();
  auto closure = [&] {
    auto loss = net->forward(x).pow(2).mean();
    loss.backward();
    return loss;
  };
  fl::optimizer opt(fl::binding<double>(*net), sam_sgd);
  opt.step(closure);
  auto p0 = net->named_parameters()["0.weight"];
  auto p2b = net->named_parameters()["2.bias"];

  // Each case: the change, the name and words the error must hold. The weights are compared with a
  // snapshot taken after the change (torch::load and .to() change them themselves).
  auto expect_stale = [&](const std::string& name, const std::string& words) {
    const auto before = snapshot(*net);
    const std::string m = usage_message([&] { opt.step(closure); });
    CHECK_MESSAGE(m.find("'" + name + "'") != std::string::npos, m);
    CHECK_MESSAGE(m.find(words) != std::string::npos, m);
    CHECK(same_values(*net, before));
    const std::string m2 = usage_message([&] { opt.ascend(); });
    CHECK_MESSAGE(m2.find("'" + name + "'") != std::string::npos, m2);
    CHECK(same_values(*net, before));
    CHECK_FALSE(opt.inner().ascended());
  };
  auto rebind_and_step = [&] {
    opt.rebind();
    const auto before = snapshot(*net);
    const auto r = opt.step(closure);
    CHECK_FALSE(r.skipped);
    CHECK_FALSE(same_values(*net, before));
  };

  SUBCASE("module->zero_grad(set_to_none = true)") {
    net->zero_grad(/*set_to_none=*/true);
    expect_stale("0.weight", "undefined");
    SUBCASE("rebind()") { rebind_and_step(); }
    SUBCASE("the adapter's zero_grad() gives the registered gradients back") {
      const void* g = opt.bound().params()[0].grad;
      opt.zero_grad();
      CHECK(p0.grad().data_ptr() == g);
      const auto before = snapshot(*net);
      CHECK_FALSE(opt.step(closure).skipped);
      CHECK_FALSE(same_values(*net, before));
    }
  }
  SUBCASE("p.mutable_grad() = Tensor()") {
    p2b.mutable_grad() = torch::Tensor();
    expect_stale("2.bias", "undefined");
    rebind_and_step();
  }
  SUBCASE("a replaced .grad") {
    p2b.mutable_grad() = torch::zeros_like(p2b);
    expect_stale("2.bias", "not the tensor that was bound");
    rebind_and_step();
  }
  SUBCASE("module->to(kFloat): rebind() refuses the dtype, converting back is still stale, rebind() works") {
    net->to(torch::kFloat);
    expect_stale("0.weight", "changed dtype from double to float");
    CHECK(usage_message([&] { opt.rebind(); }).find("use binding<float>") != std::string::npos);
    net->to(torch::kDouble);  // new storage again
    expect_stale("0.weight", "new storage");
    rebind_and_step();
  }
  SUBCASE("torch::load into the module") {
    std::stringstream file;
    torch::save(net, file);
    torch::load(net, file);
    expect_stale("0.weight", "new storage");
    rebind_and_step();
  }
  SUBCASE("a closure that sets the gradients to none itself") {
    const auto before = snapshot(*net);
    const std::string m = usage_message([&] {
      opt.step([&] {
        net->zero_grad(/*set_to_none=*/true);
        return closure();
      });
    });
    CHECK_MESSAGE(m.find("'0.weight'") != std::string::npos, m);
    CHECK(same_values(*net, before));
    CHECK_FALSE(opt.inner().ascended());
    rebind_and_step();
  }
  SUBCASE("stale between ascend() and descend(): the step is cancelled, w restored") {
    const auto before = snapshot(*net);
    opt.zero_grad();
    closure();
    opt.ascend();
    CHECK_FALSE(same_values(*net, before));  // at w + ε
    net->zero_grad(/*set_to_none=*/true);
    closure();  // a new .grad
    const std::string m = usage_message([&] { opt.descend(); });
    CHECK_MESSAGE(m.find("'0.weight'") != std::string::npos, m);
    CHECK(same_values(*net, before));
    CHECK_FALSE(opt.inner().ascended());
    rebind_and_step();
  }
  SUBCASE("module->to() between ascend() and descend(): cancelled into the registered memory, kept alive") {
    opt.zero_grad();
    closure();
    opt.ascend();
    net->to(torch::kFloat);  // torch lets go of the storages flatmin points at; the binding holds them
    const auto converted = snapshot(*net);
    const std::string m = usage_message([&] { opt.descend(); });
    CHECK_MESSAGE(m.find("'0.weight' changed dtype") != std::string::npos, m);
    CHECK(same_values(*net, converted));  // the restore went to the old storage, not to torch's new one
    CHECK_FALSE(opt.inner().ascended());
    net->to(torch::kDouble);
    rebind_and_step();
  }
  SUBCASE("rebind() to other names or sizes is refused and changes nothing") {
    auto other = torch::nn::Sequential(torch::nn::Linear(3, 4), torch::nn::Tanh(), torch::nn::Linear(4, 2));
    other->to(torch::kDouble);
    CHECK(usage_message([&] { opt.rebind(fl::trainable_parameters(*other)); }).find("'0.weight' has 12 elements") !=
          std::string::npos);
    fl::named_tensors renamed = fl::trainable_parameters(*net);
    renamed[1].first = "bias0";
    CHECK(usage_message([&] { opt.rebind(renamed); }).find("'bias0'") != std::string::npos);
    const auto before = snapshot(*net);
    CHECK_FALSE(opt.step(closure).skipped);
    CHECK_FALSE(same_values(*net, before));
  }
}

TEST_CASE("rebind() after torch::load carries the optimizer's state: the run goes on bit for bit") {
  const auto x = inputs();
  auto a = make_net(), b = make_net();
  auto closure_of = [&](torch::nn::Sequential& net) {
    return [&] {
      auto loss = net->forward(x).pow(2).mean();
      loss.backward();
      return loss;
    };
  };
  fl::optimizer oa(fl::binding<double>(*a), sam_adam), ob(fl::binding<double>(*b), sam_adam);
  for (int s = 0; s < 3; ++s) {
    oa.step(closure_of(a));
    ob.step(closure_of(b));
  }
  oa.inner().base().lr = 5e-3;  // a schedule's change survives the rebind
  ob.inner().base().lr = 5e-3;
  std::stringstream file;
  torch::save(a, file);
  torch::load(a, file);  // the same values in new storage
  oa.rebind();
  for (int s = 0; s < 5; ++s) {
    oa.step(closure_of(a));
    ob.step(closure_of(b));
  }
  CHECK(oa.inner().steps() == 8);
  CHECK(same_values(*a, snapshot(*b)));
}

TEST_CASE("step(closure) zeroes the gradients before each backward: zeroing in the closure changes nothing") {
  const auto x = inputs();
  auto a = make_net(), b = make_net();
  fl::optimizer oa(fl::binding<double>(*a), sam_sgd), ob(fl::binding<double>(*b), sam_sgd);
  for (int s = 0; s < 10; ++s) {
    oa.step([&] {  // accumulates into .grad, as torch's backward does
      auto loss = a->forward(x).pow(2).mean();
      loss.backward();
      return loss;
    });
    ob.step([&] {
      ob.zero_grad();
      auto loss = b->forward(x).pow(2).mean();
      loss.backward();
      return loss.item<double>();  // a number is a loss too
    });
  }
  CHECK(same_values(*a, snapshot(*b)));
  CHECK(usage_message([&] { oa.step([] { return torch::zeros({2}); }); }).find("one-element tensor") !=
        std::string::npos);
}

#if defined(FLATMIN_TEST_WITH_THRUST)
// The adapter is generic over the backend: on Thrust's host device system (OpenMP) the same run
// must give backend::eigen's bits (both follow summation.hpp's order), and the wrapper leaves the
// thread's Thrust stream as it found it (CPU tensors open no stream scope).
TEST_CASE("the adapter drives backend::thrust (host device system) bit for bit like backend::eigen") {
  const auto x = inputs();
  torch::manual_seed(11);
  const auto y = torch::randn({8, 2}, torch::kDouble);
  auto a = make_net(), b = make_net();
  const auto make = [](auto backend) {
    return [](const auto& ps) {
      return flatmin::sam<decltype(backend)>(ps, flatmin::base::adamw{.lr = 1e-2, .weight_decay = 0.01},
                                            {.rho = 0.05});
    };
  };
  fl::optimizer oa(fl::binding<double>(*a), make(flatmin::backend::eigen{}));
  fl::optimizer ob(fl::binding<double>(*b), make(flatmin::backend::thrust{}));
  const auto closure_of = [&](torch::nn::Sequential& net) {
    return [&] {
      auto loss = torch::mse_loss(net->forward(x), y);
      loss.backward();
      return loss;
    };
  };
  const auto before = snapshot(*a);
  for (int s = 0; s < 10; ++s) {
    oa.step(closure_of(a));
    ob.step(closure_of(b));
  }
  CHECK_FALSE(same_values(*a, before));
  CHECK(same_values(*a, snapshot(*b)));
  CHECK(flatmin::backend::thrust::stream() == flatmin::backend::thrust::stream_type{});
}
#endif

TEST_CASE("the README's libtorch example runs and trains") {
  torch::manual_seed(0);
  // From README.md, section "libtorch" (the loop's body kept; the loss recorded).
  torch::nn::Sequential net(torch::nn::Linear(4, 16), torch::nn::Tanh(), torch::nn::Linear(16, 1));
  auto x = torch::randn({64, 4}), y = torch::randn({64, 1});
  namespace fl = flatmin::libtorch;
  fl::optimizer opt(fl::binding<float>(*net), [](const auto& params) {  // names: "0.weight", ...
    return flatmin::sam(params, flatmin::base::adamw{.lr = 1e-3}, {.rho = 0.05});
  });
  double first = 0, last = 0;
  for (int step = 0; step < 100; ++step) {
    const auto r = opt.step([&] {  // forward + backward at w, then at w + ε; no zero_grad needed
      auto loss = torch::mse_loss(net->forward(x), y);
      loss.backward();
      return loss;
    });
    (step == 0 ? first : last) = r.loss;
  }
  CHECK(opt.bound().name(0) == "0.weight");
  CHECK(last < first);
}

TEST_CASE("save / load through torch::serialize archives resume bit for bit (state, step, group lrs)") {
  const auto x = inputs();
  auto closure_of = [&](torch::nn::Sequential& net) {
    return [&] {
      auto loss = net->forward(x).pow(2).mean();
      loss.backward();
      return loss;
    };
  };
  auto groups_of = [](torch::nn::Sequential& net) {
    auto ps = net->parameters();
    return std::vector<fl::param_group>{{{ps[0], ps[1]}, 2e-3, 0.1}, {{ps[2], ps[3]}, 1e-2, 0.0}};
  };
  const auto make = [](const auto& ps) {
    auto o = flatmin::sam(ps, flatmin::base::adamw{.lr = 1e-2}, {.rho = 0.05});
    o.options().clip_grad_norm = 0.5;
    return o;
  };
  auto a = make_net();
  fl::optimizer oa(fl::binding<double>(*a), groups_of(a), make);
  for (int s = 0; s < 3; ++s) oa.step(closure_of(a));
  for (auto& g : oa.param_groups()) g.options().set_lr(g.options().get_lr() * 0.5);  // a schedule
  oa.step(closure_of(a));

  std::stringstream model_file, opt_file;
  torch::save(a, model_file);
  {
    torch::serialize::OutputArchive archive;
    oa.save(archive);
    archive.save_to(opt_file);
  }
  for (int s = 0; s < 4; ++s) oa.step(closure_of(a));

  auto c = make_net();
  torch::load(c, model_file);
  fl::optimizer oc(fl::binding<double>(*c), groups_of(c), make);  // fresh: step 0, the first lrs
  torch::serialize::InputArchive in;
  in.load_from(opt_file);
  oc.load(in);
  CHECK(oc.inner().steps() == 4);
  CHECK(oc.param_groups()[0].options().get_lr() == 1e-3);
  CHECK(oc.inner().base().lr == 5e-3);
  for (int s = 0; s < 4; ++s) oc.step(closure_of(c));
  CHECK(oc.inner().steps() == 8);
  CHECK(same_values(*c, snapshot(*a)));

  SUBCASE("an archive of another composition is refused, nothing changes") {
    auto e = make_net();
    fl::optimizer oe(fl::binding<double>(*e), groups_of(e), sam_sgd);
    torch::serialize::InputArchive again;
    opt_file.seekg(0);
    again.load_from(opt_file);
    CHECK_THROWS_AS(oe.load(again), std::invalid_argument);
    CHECK(oe.inner().steps() == 0);
  }
  SUBCASE("an archive without flatmin's entries is refused") {
    std::stringstream other;
    {
      torch::serialize::OutputArchive archive;
      archive.write("something", torch::zeros({2}));
      archive.save_to(other);
    }
    torch::serialize::InputArchive again;
    again.load_from(other);
    CHECK(usage_message([&] { oc.load(again); }).find("no flatmin optimizer") != std::string::npos);
  }
}

TEST_CASE("add_lora_pair registers two bound tensors as a LoRA pair for BAR; mistakes name the tensor") {
  auto net = make_net();  // "0.weight" (5x3) and "2.weight" (2x5) stand for A and B: B·A is 2x3
  fl::binding<double> b(*net);
  b.add_lora_pair("adapter", "0.weight", "2.weight");
  const auto& ps = b.params();
  REQUIRE(ps.lora_pairs().size() == 1);
  CHECK(ps[ps.lora_pairs()[0].a].name == "adapter.A");
  CHECK(ps[ps.lora_pairs()[0].b].name == "adapter.B");
  CHECK(ps[ps.lora_pairs()[0].a].value == net->parameters()[0].data_ptr<double>());
  CHECK(ps[ps.lora_pairs()[0].b].value == net->parameters()[2].data_ptr<double>());
  CHECK(ps.size() == 4);
  CHECK(usage_message([&] { b.add_lora_pair("again", "0.weight", "0.bias"); }).find("already in pair") !=
        std::string::npos);
  CHECK(usage_message([&] { b.add_lora_pair("x", "nope", "0.bias"); }).find("'nope'") != std::string::npos);
  // the pair survives a rebind, and BAR trains through it
  fl::optimizer opt(b, [](const auto& p) { return flatmin::bar(p, flatmin::base::sgd{.lr = 0.05}, {.rho = 0.1}); });
  opt.rebind();
  CHECK(opt.bound().params().lora_pairs().size() == 1);
  const auto x = inputs();
  const auto r = opt.step([&] {
    auto loss = net->forward(x).pow(2).mean();
    loss.backward();
    return loss;
  });
  CHECK_FALSE(r.skipped);
}

// ---- 16-bit tensors ---------------------------------------------------------------------------
// The binding's part of a bf16 / half run is the mapping: the registered memory seen as
// flatmin::bfloat16 / half with the same bits, no copy. The reference is the core optimizer on
// 16-bit buffers of its own holding the same bits and fed the same gradients (the core's 16-bit
// arithmetic is checked against a float64 re-derivation in tests/unit/test_mixed_precision.cpp).
// The gradient of ½ Σ a_i w_i², scaled by s, is formed in float and rounded once to the 16-bit type,
// by torch's conversion on one side and flatmin's on the other (both round to nearest even).
namespace {

template <class T>
constexpr torch::Dtype torch_dtype = std::is_same_v<T, flatmin::bfloat16> ? torch::kBFloat16 : torch::kHalf;

struct quadratic16 {
  std::vector<torch::Tensor> a;  ///< float coefficients, one tensor per parameter
};

template <class T>
std::vector<torch::Tensor> params16(int seed) {
  torch::manual_seed(seed);
  return {torch::randn({3, 4}).to(torch_dtype<T>).requires_grad_(),
          torch::randn({4}).to(torch_dtype<T>).requires_grad_()};
}

quadratic16 coefficients() {
  torch::manual_seed(11);
  return {{torch::rand({3, 4}) * 2 + 0.5, torch::rand({4}) * 2 + 0.5}};
}

/// The 16-bit values of a tensor as flatmin's type (a copy of the bits).
template <class T>
std::vector<T> bits_of(const torch::Tensor& t) {
  std::vector<T> out(static_cast<std::size_t>(t.numel()));
  std::memcpy(out.data(), t.data_ptr(), out.size() * sizeof(T));
  return out;
}

/// Runs both for `steps` steps and compares the weights' bits; returns how many steps were skipped.
template <class T, class Make>
int check_against_core(const Make& make, int steps, double scale_of_loss = 1.0) {
  const quadratic16 q = coefficients();
  // through the binding and the torch wrapper
  auto ts = params16<T>(21);
  fl::optimizer opt(fl::binding<T>(ts), make);
  auto closure = [&] {
    const double s = opt.inner().options().loss_scale.enabled ? opt.inner().loss_scale() : scale_of_loss;
    double loss = 0;
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const auto w = ts[i].detach().to(torch::kFloat);
      ts[i].mutable_grad().copy_((q.a[i] * w * static_cast<float>(s)).to(torch_dtype<T>));
      loss += 0.5 * (q.a[i].to(torch::kDouble) * w.to(torch::kDouble).pow(2)).sum().template item<double>();
    }
    return loss;
  };
  // the core optimizer on buffers of its own with the same bits
  std::vector<std::vector<T>> w, g;
  std::vector<std::vector<float>> a;
  auto start = params16<T>(21);
  flatmin::param_set<T> ps;
  for (std::size_t i = 0; i < start.size(); ++i) {
    w.push_back(bits_of<T>(start[i]));
    g.emplace_back(w.back().size());
    const auto ai = q.a[i].contiguous();
    a.emplace_back(ai.data_ptr<float>(), ai.data_ptr<float>() + ai.numel());
  }
  for (std::size_t i = 0; i < w.size(); ++i)
    ps.add(std::to_string(i), w[i].data(), g[i].data(), start[i].sizes().vec());
  auto core = make(ps);
  auto objective = [&] {
    const double s = core.options().loss_scale.enabled ? core.loss_scale() : scale_of_loss;
    for (std::size_t i = 0; i < w.size(); ++i)
      for (std::size_t j = 0; j < w[i].size(); ++j)
        g[i][j] = T(a[i][j] * static_cast<float>(w[i][j]) * static_cast<float>(s));
    return 0.0;
  };
  int skipped = 0;
  for (int k = 0; k < steps; ++k) {
    const auto r1 = opt.step(closure, {.grad_scale = opt.inner().options().loss_scale.enabled ? 1.0 : scale_of_loss});
    const auto r2 = core.step(objective, {.grad_scale = core.options().loss_scale.enabled ? 1.0 : scale_of_loss});
    REQUIRE(r1.skipped == r2.skipped);
    skipped += r1.skipped ? 1 : 0;
  }
  CHECK(opt.inner().steps() == core.steps());
  for (std::size_t i = 0; i < w.size(); ++i) {
    const auto now = bits_of<T>(ts[i]);
    REQUIRE(now.size() == w[i].size());
    CHECK(std::memcmp(now.data(), w[i].data(), now.size() * sizeof(T)) == 0);
    CHECK((ts[i].scalar_type() == torch_dtype<T>));
  }
  // the steps moved the weights (the comparison is not between two untouched copies)
  const auto before = params16<T>(21);
  CHECK_FALSE(torch::equal(before[0], ts[0].detach()));
  return skipped;
}

}  // namespace

TEST_CASE_TEMPLATE("bf16 / half tensors bind in place: steps equal the core optimizer's on the same bits", T,
                   flatmin::bfloat16, flatmin::half) {
  SUBCASE("in place, SAM over SGD with momentum (state in float)") {
    check_against_core<T>(sam_sgd, 6);
  }
  SUBCASE("master weights, SAM over AdamW") {
    check_against_core<T>(
        [](const auto& ps) {
          auto o = flatmin::sam(ps, flatmin::base::adamw{.lr = 1e-2, .weight_decay = 0.1}, {.rho = 0.05});
          o.options().master_weights = true;
          return o;
        },
        6);
  }
  SUBCASE("dynamic loss scaling (the closure scales by opt.loss_scale()), with an overflow at the start") {
    const int skipped = check_against_core<T>(
        [](const auto& ps) {
          auto o = flatmin::sam(ps, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.05});
          o.options().master_weights = true;
          // 2^17 overflows half (max 65504) on the first step: skipped, backed off, then applied
          o.options().loss_scale = {.enabled = true, .init_scale = 0x1p17, .growth_interval = 2};
          return o;
        },
        6);
    // half overflows at 2^17 (and again after each growth back to it); bf16 has float's range
    if (std::is_same_v<T, flatmin::half>)
      CHECK(skipped >= 1);
    else
      CHECK(skipped == 0);
  }
}

TEST_CASE("a bf16 optimizer with master weights saves and loads through an archive and resumes bit for bit") {
  using T = flatmin::bfloat16;
  const quadratic16 q = coefficients();
  const auto make = [](const auto& ps) {
    auto o = flatmin::sam(ps, flatmin::base::adamw{.lr = 1e-2}, {.rho = 0.05});
    o.options().master_weights = true;
    return o;
  };
  auto closure_for = [&](std::vector<torch::Tensor>& ts) {
    return [&] {
      for (std::size_t i = 0; i < ts.size(); ++i)
        ts[i].mutable_grad().copy_((q.a[i] * ts[i].detach().to(torch::kFloat)).to(torch::kBFloat16));
      return 0.0;
    };
  };
  auto ta = params16<T>(21);
  fl::optimizer oa(fl::binding<T>(ta), make);
  for (int s = 0; s < 3; ++s) oa.step(closure_for(ta));
  std::stringstream opt_file;
  {
    torch::serialize::OutputArchive archive;
    oa.save(archive);
    archive.save_to(opt_file);
  }
  std::vector<torch::Tensor> tc;
  for (const auto& t : ta) tc.push_back(t.detach().clone().requires_grad_());
  for (int s = 0; s < 4; ++s) oa.step(closure_for(ta));

  fl::optimizer oc(fl::binding<T>(tc), make);
  torch::serialize::InputArchive in;
  in.load_from(opt_file);
  oc.load(in);
  for (int s = 0; s < 4; ++s) oc.step(closure_for(tc));
  CHECK(oc.inner().steps() == 7);
  for (std::size_t i = 0; i < ta.size(); ++i) CHECK(torch::equal(ta[i].detach(), tc[i].detach()));

  SUBCASE("without the archive the master copy is taken from the bf16 weights: the runs part") {
    std::vector<torch::Tensor> td;
    auto t0 = params16<T>(21);
    fl::optimizer od(fl::binding<T>(t0), make);
    for (int s = 0; s < 3; ++s) od.step(closure_for(t0));
    for (const auto& t : t0) td.push_back(t.detach().clone().requires_grad_());
    fl::optimizer oe(fl::binding<T>(td), make);  // fresh: no moments, master = rounded weights
    for (int s = 0; s < 4; ++s) oe.step(closure_for(td));
    CHECK_FALSE(torch::equal(ta[0].detach(), td[0].detach()));
  }
  SUBCASE("an archive of a half optimizer is refused by a bf16 one") {
    auto th = params16<flatmin::half>(21);
    fl::optimizer oh(fl::binding<flatmin::half>(th), make);
    torch::serialize::InputArchive again;
    opt_file.seekg(0);
    again.load_from(opt_file);
    CHECK_THROWS_AS(oh.load(again), std::invalid_argument);
  }
}

TEST_CASE("add_lora_pair with a frozen base weight: Flat-LoRA perturbs it around the one backward and puts it "
          "back; SAMPa's middle call; mistakes and a replaced base are named") {
  // a LoRA linear layer: W {4, 3} frozen, A {2, 3}, B {4, 2}; the output (W + 0.5·B·A)·x
  torch::manual_seed(11);
  auto W = torch::randn({4, 3}, torch::kDouble);
  auto A = torch::randn({2, 3}, torch::kDouble).set_requires_grad(true);
  auto B = torch::randn({4, 2}, torch::kDouble).set_requires_grad(true);
  fl::binding<double> b(fl::named_tensors{{"lora_A", A}, {"lora_B", B}});
  b.add_lora_pair("layer", "lora_A", "lora_B", W, 0.5);
  const auto& ps = b.params();
  REQUIRE(ps.frozen().size() == 1);
  CHECK(ps.frozen()[0].value == W.data_ptr<double>());
  CHECK(ps.frozen()[0].rows == 4);
  CHECK(ps.frozen()[0].cols == 3);
  CHECK(ps.lora_pairs()[0].scale == 0.5);
  const auto x = inputs().t();  // {3, 8}
  const torch::Tensor W0 = W.clone();
  fl::optimizer opt(b, [](const auto& p) {
    return flatmin::flat_lora(p, flatmin::base::adamw{.lr = 1e-2}, {.rho = 0.5, .exact_restore = true});
  });
  int calls = 0;
  double seen = 0;
  opt.step([&] {
    ++calls;
    seen = (W - W0).abs().max().item<double>();  // the closure runs at the perturbed base
    auto loss = torch::matmul(W + 0.5 * torch::matmul(B, A), x).pow(2).mean();
    loss.backward();
    return loss;
  });
  CHECK(calls == 1);
  CHECK(seen > 0);
  CHECK(torch::equal(W, W0));  // put back bit for bit
  // a replaced base is named before anything is touched
  {
    const torch::NoGradGuard ng;
    W.set_data(W.clone());
  }
  CHECK(usage_message([&] { opt.step([&] { return torch::tensor(0.0); }); }).find("base weight of LoRA pair 'layer'") !=
        std::string::npos);
  opt.rebind();
  CHECK(opt.bound().params().frozen()[0].value == W.data_ptr<double>());
  // mistakes at registration
  auto A2 = torch::randn({2, 3}, torch::kDouble).set_requires_grad(true);
  auto B2 = torch::randn({4, 2}, torch::kDouble).set_requires_grad(true);
  fl::binding<double> b2(fl::named_tensors{{"A", A2}, {"B", B2}});
  CHECK(usage_message([&] { b2.add_lora_pair("p", "A", "B", torch::randn({3, 4}, torch::kDouble), 1.0); })
            .find("{out, in}") != std::string::npos);
  CHECK(usage_message([&] { b2.add_lora_pair("p", "A", "B", torch::randn({4, 3}, torch::kFloat), 1.0); })
            .find("the base weight is float") != std::string::npos);
  CHECK(usage_message([&] { b2.add_lora_pair("p", "A", "B", torch::randn({3, 4}, torch::kDouble).t(), 1.0); })
            .find("contiguous") != std::string::npos);
  CHECK(b2.params().lora_pairs().empty());
  // SAMPa through the wrapper: the two-call protocol with its middle call, and step(closure)
  fl::optimizer sp(b2, [](const auto& p) { return flatmin::sampa(p, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9}); });
  auto loss_of = [&] { return torch::matmul(torch::matmul(B2, A2), x).pow(2).mean(); };
  int sp_calls = 0;
  sp.step([&] {
    ++sp_calls;
    auto l = loss_of();
    l.backward();
    return l;
  });
  CHECK(sp_calls == 2);
  sp.ascend();
  sp.zero_grad();
  loss_of().backward();
  sp.second_point();
  sp.zero_grad();
  loss_of().backward();
  CHECK_FALSE(sp.descend().skipped);
}
