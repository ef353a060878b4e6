#include "core/errors.h"

#include <c10/util/Exception.h>

namespace blipdiff {

std::string describe(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

void rethrow_with_context(const std::string& context) {
  try {
    throw;
  } catch (const AbortError&) {
    throw;
  } catch (const Error& e) {
    throw Error(e.code(), context + ": " + e.what());
  } catch (const std::exception& e) {
    throw Error(codes::kRuntime, context + ": " + describe(e));
  }
}

}  // namespace blipdiff
