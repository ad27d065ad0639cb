"""Teacher answers of real length on one topic (data protection), Chinese and English, and the
random character edits that turn one of them into a near duplicate.

Written the way a teacher answers the built-in tasks (relevance, QA, summarization, NLI): the
same topic throughout, so any two of them are "unrelated answers on the same topic", the pairs a
near-duplicate threshold must not join. Shared by the qc tests and bench/qc_near_duplicates.py.
"""

from __future__ import annotations

import random
import string

ZH_ANSWERS = [
    "相关####第十三条列出了处理个人信息的合法基础：取得个人同意、为订立或履行合同所必需、为履行法定职责或法定义务所必需、"
    "为应对突发公共卫生事件所必需等。文本同时规定，在上述情形之外处理个人信息的，应当取得个人同意，这正是个人信息保护制度的核心内容，"
    "因此与主题直接相关。",
    "相关####文本规定个人信息处理者向境外提供个人信息前，应当向个人告知境外接收方的名称、联系方式、处理目的、处理方式和个人信息的种类，"
    "并取得个人的单独同意。达到规定数量的，还须通过国家网信部门组织的安全评估。这些都是数据出境环节的个人信息保护要求。",
    "应当在发现安全事件后立即采取补救措施，并通知履行个人信息保护职责的部门和个人####依据第五十七条，发生或者可能发生个人信息泄露、"
    "篡改、丢失的，个人信息处理者应当立即采取补救措施，并通知相关部门和个人。通知应当包括发生的原因、可能造成的危害以及已采取的补救措施。",
    "不相关####文本是公司工会关于年终联欢会的通知，内容涉及节目报名时间、彩排地点和抽奖规则，没有提及任何个人信息的收集、使用、"
    "存储或者对外提供，也没有涉及数据安全或隐私保护的要求，因此与个人信息保护主题无关。",
    "处理敏感个人信息应当取得个人的单独同意，并告知处理的必要性以及对个人权益的影响####文本第二十九条和第三十条规定，敏感个人信息包括"
    "生物识别、宗教信仰、医疗健康、金融账户、行踪轨迹等信息，只有在具有特定目的和充分必要性并采取严格保护措施的情况下才能处理，"
    "且须取得单独同意。",
    "相关####该条款要求大型互联网平台设立主要由外部成员组成的独立机构，对个人信息保护情况进行监督，定期发布个人信息保护社会责任报告，"
    "并对严重违法的平台内产品或服务提供者停止提供服务。这是对守门人平台的特别义务，属于个人信息保护的范畴。",
    "本法规定了自动化决策的透明度要求，个人有权拒绝仅通过自动化决策方式作出的决定####要点：第二十四条要求利用个人信息进行自动化决策"
    "应当保证决策的透明度和结果公平、公正，不得对个人在交易价格等交易条件上实行不合理的差别待遇；通过自动化决策方式向个人进行信息推送、"
    "商业营销，应当同时提供不针对其个人特征的选项。",
    "相关####文本规定个人信息处理者应当按照规定制定内部管理制度和操作规程，对个人信息实行分类管理，采取加密、去标识化等安全技术措施，"
    "合理确定操作权限并定期对从业人员进行安全教育和培训，还要制定并组织实施应急预案。这些义务都是为了保护个人信息安全。",
    "不相关####这段文字介绍的是城市轨道交通三号线的施工进度，包括盾构机始发、车站主体结构封顶以及预计通车时间，并提醒沿线居民注意绕行。"
    "文本没有涉及个人信息的处理规则，与个人信息保护没有关系。",
    "个人有权查阅、复制其个人信息，处理者应当及时提供####依据第四十五条，个人请求查阅、复制其个人信息的，个人信息处理者应当及时提供；"
    "个人请求将个人信息转移至其指定的个人信息处理者，符合国家网信部门规定条件的，处理者应当提供转移的途径。文本还规定了更正、补充和删除的权利。",
]

EN_ANSWERS = [
    "relevant####Article 6 lists the lawful bases for processing: the data subject's consent, the performance of a contract, "
    "a legal obligation, the vital interests of a person, a task carried out in the public interest, and the legitimate "
    "interests of the controller. Any processing of personal data must rest on at least one of these bases, so the "
    "passage is directly about data protection.",
    "The controller must notify the supervisory authority within 72 hours of becoming aware of a breach####Article 33 "
    "requires the controller to report a personal data breach to the competent supervisory authority without undue delay "
    "and, where feasible, not later than 72 hours after having become aware of it, unless the breach is unlikely to result "
    "in a risk to the rights and freedoms of individuals. A late notification must give the reasons for the delay.",
    "irrelevant####The passage is a facilities notice about the renovation of the third-floor kitchen: it gives the dates "
    "of the works, asks staff to use the canteen on the ground floor in the meantime and reminds everyone to label food in "
    "the shared fridge. Nothing in it concerns the collection, use or protection of personal data.",
    "yes####The second paragraph states that the regulation applies to the processing of personal data of data subjects "
    "who are in the Union by a controller not established in the Union, where the processing relates to offering goods or "
    "services to them or to monitoring their behaviour. A company abroad that targets residents is therefore covered.",
    "Data subjects may obtain the erasure of their personal data without undue delay####According to Article 17, the data "
    "subject has the right to have personal data erased where it is no longer necessary for the purposes for which it was "
    "collected, where consent is withdrawn and no other legal ground applies, or where the data has been unlawfully "
    "processed. The controller must also take reasonable steps to inform other controllers processing the data.",
    "relevant####The clause requires organisations to carry out a data protection impact assessment before any processing "
    "that is likely to result in a high risk to individuals, in particular systematic monitoring of publicly accessible "
    "areas on a large scale or large-scale processing of special categories of data. The assessment must describe the "
    "processing, its necessity and the measures that address the risks.",
    "The law sets fines of up to 4% of annual worldwide turnover####Key points: Article 83 makes administrative fines "
    "effective, proportionate and dissuasive; infringements of the basic principles, of data subjects' rights or of the "
    "rules on international transfers can be fined up to 20 million euros or 4% of the total worldwide annual turnover of "
    "the preceding financial year, whichever is higher.",
    "irrelevant####The text announces the results of the annual charity run: the number of participants, the total amount "
    "raised for the local children's hospital and the names of the three fastest runners in each category. It mentions "
    "people by name but says nothing about how personal data is handled, so it is not about data protection.",
    "contradiction####The passage allows transfers to a third country when the Commission has decided that the country "
    "ensures an adequate level of protection, or when the controller provides appropriate safeguards such as standard "
    "contractual clauses. The hypothesis that all transfers outside the Union are banned contradicts these provisions.",
    "relevant####The article obliges controllers and processors to designate a data protection officer when their core "
    "activities consist of regular and systematic monitoring of data subjects on a large scale, or of large-scale "
    "processing of special categories of data. The officer advises on compliance, monitors it and is the contact point "
    "for the supervisory authority.",
]

# Common Chinese characters: what a substituted or inserted character is drawn from.
ZH_POOL = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
           "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还")


def edit(text: str, share: float, rng: random.Random) -> str:
    """`text` with round(share x length) random character edits, substitutions, insertions and
    deletions in equal measure, at distinct positions (what a re-generated or retouched answer is)."""
    chars = list(text)
    pool = ZH_POOL if sum(ord(c) > 0x3000 for c in text) > len(text) / 3 else string.ascii_lowercase
    n = max(1, round(share * len(chars)))
    for pos in sorted(rng.sample(range(len(chars)), n), reverse=True):  # from the end: positions stay valid
        how = rng.randrange(3)
        if how == 0:
            chars[pos] = rng.choice(pool.replace(chars[pos], ""))
        elif how == 1:
            chars.insert(pos, rng.choice(pool))
        else:
            del chars[pos]
    return "".join(chars)
