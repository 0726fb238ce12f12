// keywarden token list: the tokens a PKCS#11 module offers.
#include "cli/commands.h"
#include "hsm/module.h"
#include "hsm/strings.h"

namespace keywarden::cli {

void RegisterTokenCommands(CLI::App& app, const Output& out, Action& action) {
  CLI::App* token = app.add_subcommand("token", "PKCS#11 tokens (HSMs, smart cards)");
  token->require_subcommand(1);
  CLI::App* list = token->add_subcommand("list", "List the tokens of a PKCS#11 module");
  auto module = std::make_shared<std::string>();
  list->add_option("--module", *module,
                   "PKCS#11 module path or p11-kit name (default $KEYWARDEN_PKCS11_MODULE)");
  list->callback([&out, &action, module] {
    action = [&out, module] {
      std::string spec = DefaultModule(*module);
      auto m = hsm::Module::Load(spec);
      if (!m.ok()) return out.Fail(m.status());
      auto tokens = (*m)->Tokens();
      if (!tokens.ok()) return out.Fail(tokens.status());
      nlohmann::json j = nlohmann::json::array();
      std::string text;
      for (const auto& t : *tokens) {
        const bool logged_in_required = (t.info.flags & CKF_LOGIN_REQUIRED) != 0;
        j.push_back({{"label", t.label},
                     {"serial", t.serial},
                     {"manufacturer", t.manufacturer},
                     {"model", t.model},
                     {"login_required", logged_in_required},
                     {"initialized", t.initialized},
                     {"uri", StrCat("pkcs11:token=", t.label, ";serial=", t.serial)}});
        text += t.initialized ? StrCat(t.label, "\tserial ", t.serial, "\t", t.manufacturer, " ",
                                       t.model, "\n")
                              : StrCat("(not initialised)\t", t.manufacturer, " ", t.model, "\n");
      }
      out.Result({{"module", (*m)->path()}, {"tokens", j}}, text.empty() ? "no tokens\n" : text);
      return static_cast<int>(kExitOk);
    };
  });
}

}  // namespace keywarden::cli
