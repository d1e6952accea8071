// C++ test of the native sparse ops through the dispatcher, on both CPU paths (PYCOMPRESS_CPU_ISA=scalar
// and auto): sparse24_compress against the layout rule written out here, the three GEMMs against x w^T of
// the dense weight, and the index checks of csr_mm and bsr_mm.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED %s\n", what.c_str());
    ++failures;
  }
}

std::string shape(const char* isa, int64_t M, int64_t N, int64_t K) {
  return std::string(" [") + isa + "] M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
}

std::tuple<at::Tensor, at::Tensor> sparse24_compress(const at::Tensor& w) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pycompress_C::sparse24_compress", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(w);
}

using Mm4 = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
using Mm5 = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const std::optional<at::Tensor>&);

at::Tensor sparse24_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                       const std::optional<at::Tensor>& bias) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("pycompress_C::sparse24_mm", "").typed<Mm4>();
  return op.call(x, values, meta, bias);
}

at::Tensor sparse_mm(const char* name, const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                     const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Mm5>();
  return op.call(x, crow, col, values, bias);
}

bool close(const at::Tensor& out, const at::Tensor& want) {
  return out.sizes() == want.sizes() && at::allclose(out, want, 1e-4, 1e-4);
}

// A 2:4 weight whose groups hold 2, 1 or 0 non-zeros, at random positions.
at::Tensor random_24(int64_t N, int64_t K) {
  auto w = at::randn({N, K / 4, 4});
  auto order = at::rand({N, K / 4, 4}).argsort(/*dim=*/-1, /*descending=*/false);
  auto keep = at::lt(order, at::randint(0, 3, {N, K / 4, 1}));
  return (w * keep).reshape({N, K});
}

// The layout rule: kept positions are the non-zeros, then the lowest zero positions, ascending.
void check_compress(const char* isa, int64_t N, int64_t K) {
  auto w = random_24(N, K);
  auto [values, meta] = sparse24_compress(w);
  auto wa = w.accessor<float, 2>();
  auto va = values.accessor<float, 2>();
  auto ma = meta.accessor<int16_t, 2>();
  bool ok = true;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < K / 4; ++g) {
      int kept[2];
      int count = 0;
      for (int p = 0; p < 4 && count < 2; ++p) {
        if (wa[n][4 * g + p] != 0.0f) kept[count++] = p;
      }
      for (int p = 0; p < 4 && count < 2; ++p) {
        if (wa[n][4 * g + p] == 0.0f) kept[count++] = p;
      }
      if (kept[0] > kept[1]) std::swap(kept[0], kept[1]);
      const int nibble = (static_cast<uint16_t>(ma[n][g / 4]) >> (4 * (g % 4))) & 15;
      ok &= nibble == (kept[0] | (kept[1] << 2));
      ok &= va[n][2 * g] == wa[n][4 * g + kept[0]] && va[n][2 * g + 1] == wa[n][4 * g + kept[1]];
    }
  }
  expect(ok, "sparse24_compress layout" + shape(isa, 0, N, K));
}

void check_sparse24_mm(const char* isa, int64_t M, int64_t N, int64_t K) {
  auto w = random_24(N, K);
  auto [values, meta] = sparse24_compress(w);
  auto x = at::randn({M, K});
  auto bias = at::randn({N});
  expect(close(sparse24_mm(x, values, meta, bias), at::addmm(bias, x, w.t())), "sparse24_mm" + shape(isa, M, N, K));
  auto xh = x.to(at::kHalf);
  auto out = sparse24_mm(xh, values.to(at::kHalf), meta, std::nullopt);
  auto want = at::matmul(xh.to(at::kFloat), w.to(at::kHalf).to(at::kFloat).t());
  expect(out.scalar_type() == at::kHalf && at::allclose(out.to(at::kFloat), want, 1e-2, 5e-2),
         "sparse24_mm float16" + shape(isa, M, N, K));
}

void check_csr(const char* isa, int64_t M, int64_t N, int64_t K) {
  auto w = at::randn({N, K}) * at::ge(at::rand({N, K}), 0.8);
  auto csr = w.to_sparse_csr();
  auto crow = csr.crow_indices().to(at::kInt);
  auto col = csr.col_indices().to(at::kInt);
  auto values = csr.values().contiguous();
  auto x = at::randn({M, K});
  auto bias = at::randn({N});
  expect(close(sparse_mm("pycompress_C::csr_mm", x, crow, col, values, bias), at::addmm(bias, x, w.t())),
         "csr_mm" + shape(isa, M, N, K));
}

void check_bsr(const char* isa, int64_t M, int64_t N, int64_t K, int64_t B) {
  auto keep = at::ge(at::rand({N / B, K / B}), 0.6).repeat_interleave(B, 0).repeat_interleave(B, 1);
  auto w = at::randn({N, K}) * keep;
  auto bsr = w.to_sparse_bsr({B, B});
  auto crow = bsr.crow_indices().to(at::kInt);
  auto col = bsr.col_indices().to(at::kInt);
  auto values = bsr.values().contiguous();
  auto x = at::randn({M, K});
  expect(close(sparse_mm("pycompress_C::bsr_mm", x, crow, col, values, std::nullopt), at::matmul(x, w.t())),
         "bsr_mm B=" + std::to_string(B) + shape(isa, M, N, K));
}

// A bad index array raises c10::ValueError (Python's ValueError) with the message the reference gives.
void check_bad_indices(const char* isa) {
  auto crow = at::tensor({0, 1, 2}, at::kInt);
  auto values = at::ones({2});
  auto x = at::randn({3, 32});
  auto raises = [&](const char* name, const at::Tensor& c, const at::Tensor& k, const at::Tensor& v,
                    const std::string& start) {
    try {
      sparse_mm(name, x, c, k, v, std::nullopt);
    } catch (const c10::ValueError& e) {
      return std::string(e.what_without_backtrace()).rfind(start, 0) == 0;
    }
    return false;
  };
  expect(raises("pycompress_C::csr_mm", crow, at::tensor({0, 32}, at::kInt), values,
                "csr_mm: col must hold (block) column indices in [0, K)"),
         std::string("csr_mm col out of range [") + isa + "]");
  expect(raises("pycompress_C::csr_mm", crow, at::tensor({0, -1}, at::kInt), values,
                "csr_mm: col must hold (block) column indices in [0, K)"),
         std::string("csr_mm negative col [") + isa + "]");
  expect(raises("pycompress_C::csr_mm", at::tensor({0, 2, 1}, at::kInt), at::tensor({0, 1}, at::kInt), values,
                "csr_mm: crow must start at 0, never decrease and end at col.numel()"),
         std::string("csr_mm decreasing crow [") + isa + "]");
  expect(raises("pycompress_C::bsr_mm", at::tensor({0, 1}, at::kInt), at::tensor({2}, at::kInt),
                at::ones({1, 16, 16}), "bsr_mm: col must hold (block) column indices in [0, K / B)"),
         std::string("bsr_mm col out of range [") + isa + "]");
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (const char* isa : {"scalar", "auto"}) {
    setenv("PYCOMPRESS_CPU_ISA", isa, 1);
    check_compress(isa, 7, 48);
    for (int64_t M : {1, 2, 3, 4, 5, 9, 17, 40}) {
      check_sparse24_mm(isa, M, 21, 80);
      check_csr(isa, M, 19, 70);
      check_bsr(isa, M, 64, 128, M % 2 ? 16 : 32);
    }
    check_sparse24_mm(isa, 300, 40, 528);
    check_bsr(isa, 3, 128, 128, 64);
    check_bad_indices(isa);
  }
  if (failures) {
    std::fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  std::printf("sparse C++ tests passed\n");
  return 0;
}
